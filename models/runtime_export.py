"""Export the served network to ONNX once per model: the graph OpenVINO and ONNX Runtime load.

The graph takes pixels (float32 in 0..255: a uint8 batch cast, no other work) and normalises them itself
(scale to [0, 1], then the model's mean/std, the same arithmetic as ``models.preprocess.build_normalise``), so
the processes that decode images ship uint8 and never do per-image float arithmetic.

The file is cached under a key made of the model fingerprint (architecture + exact weights), the
preprocessing it expects (input size, mean, std) and the exporter's version, so a new or trained checkpoint
gets its own export and an unchanged model is never exported twice. Written to a temporary name and renamed,
so concurrent processes (indexer and service) can share the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from models.atomic import atomic_path
from models.checkpoint import model_fingerprint
from models.embedding import EmbeddingNet

log = logging.getLogger(__name__)

EXPORT_FORMAT = "lookalike-onnx/2"  # bump when the export changes in a way that changes the graph
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
INPUT_KIND = "pixels"  # what the exported graph takes: float32 pixel values in 0..255, normalised inside


class PixelInputNet(nn.Module):
    """``model`` behind its own normalisation: pixels (N,3,S,S) in 0..255 -> unit embeddings."""

    def __init__(self, model: EmbeddingNet) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(model.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(model.std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels.float() * (1.0 / 255.0) - self.mean) / self.std)


def export_key(model: EmbeddingNet) -> str:
    """A name for ``model``'s export: weights, preprocessing and exporter version all change it."""
    preprocessing = {"size": model.config.image_size, "mean": list(model.mean), "std": list(model.std),
                     "input": INPUT_KIND}
    blob = json.dumps({"model": model_fingerprint(model), "pre": preprocessing, "format": EXPORT_FORMAT,
                       "torch": torch.__version__.split("+")[0]}, sort_keys=True)
    return f"{model.config.backbone}-{model.config.image_size}px-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def export_onnx(model: EmbeddingNet, cache_dir: Path) -> Path:
    """The cached ONNX file for ``model`` (fp32, pixel input, batch dimension dynamic), exported now if missing."""
    size = model.config.image_size
    return export_if_missing(cache_dir / export_key(model) / "model.onnx", model.config.backbone,
                             lambda: PixelInputNet(model.eval().to("cpu")).eval(), torch.zeros(2, 3, size, size),
                             [INPUT_NAME], [OUTPUT_NAME], {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def export_if_missing(path: Path, what: str, module: Callable[[], nn.Module], example: torch.Tensor,
                      input_names: list[str], output_names: list[str],
                      dynamic_axes: dict[str, dict[int, str]]) -> Path:
    """``path``, first exported from ``module()`` by :func:`write_onnx` if no file is there (``module`` is only
    called then: building it may move the model to the CPU)."""
    if path.is_file():
        return path
    log.info("exporting %s to ONNX at %s", what, path)
    write_onnx(module(), example, path, input_names, output_names, dynamic_axes)
    return path


def write_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_names: list[str],
               output_names: list[str], dynamic_axes: dict[str, dict[int, str]]) -> None:
    """Export ``module`` (eval mode, on the CPU) to ``path`` atomically, traced on ``example``."""
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings: shapes other than the dynamic axes are fixed by design
        # The TorchScript exporter: one file, no external weights, and several times quicker than dynamo here.
        torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=17,
                          input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes)
