"""Export the served network to ONNX once per model: the graph OpenVINO and ONNX Runtime load.

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
from pathlib import Path

import torch

from models.atomic import atomic_path
from models.checkpoint import model_fingerprint
from models.embedding import EmbeddingNet

log = logging.getLogger(__name__)

EXPORT_FORMAT = "lookalike-onnx/1"  # bump when the export changes in a way that changes the graph
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"


def export_key(model: EmbeddingNet) -> str:
    """A name for ``model``'s export: weights, preprocessing and exporter version all change it."""
    preprocessing = {"size": model.config.image_size, "mean": list(model.mean), "std": list(model.std)}
    blob = json.dumps({"model": model_fingerprint(model), "pre": preprocessing, "format": EXPORT_FORMAT,
                       "torch": torch.__version__.split("+")[0]}, sort_keys=True)
    return f"{model.config.backbone}-{model.config.image_size}px-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def export_onnx(model: EmbeddingNet, cache_dir: Path) -> Path:
    """The cached ONNX file for ``model`` (fp32, batch dimension dynamic), exported now if missing."""
    path = cache_dir / export_key(model) / "model.onnx"
    if path.is_file():
        return path
    size = model.config.image_size
    example = torch.zeros(2, 3, size, size)
    log.info("exporting %s to ONNX at %s", model.config.backbone, path)
    module = model.eval().to("cpu")
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings: the input size is fixed by design, only the batch varies
        # The TorchScript exporter: one file, no external weights, and several times quicker than dynamo here.
        torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=17,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return path
