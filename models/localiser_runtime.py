"""The query localiser's network through the inference runtime (OpenVINO or ONNX Runtime on the CPU).

The trunk, feature pyramid and FCOS head (all the convolutions) are exported to ONNX once per localiser,
cached under a fingerprint of its config and weights, and run by the engine the embedder uses. What is not
a network stays in PyTorch, unchanged: FCOS's input transform (normalise, pad to a multiple of 32), the anchors,
box decoding, score threshold, NMS and the resize back, so the detections match the eager localiser's.
The photo's shape varies (longer side fixed, padded to a multiple of 32), so the graph's height and width
are dynamic.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.models.detection.image_list import ImageList

from models.localiser import HEAD_OUTPUTS, Localiser, LocaliserNet, LocaliserNetwork, _to_tensor
from models.runtime import RuntimeOptions, resolve_runtime
from models.runtime_export import export_if_missing


EXPORT_FORMAT = "lookalike-localiser-onnx/1"  # bump when the exported graph changes


def localiser_key(net: LocaliserNet) -> str:
    """A name for ``net``'s export: its config, exact weights, the export format and torch's version."""
    digest = hashlib.sha256(json.dumps({"config": net.config.model_dump(), "format": EXPORT_FORMAT,
                                        "torch": torch.__version__.split("+")[0]}, sort_keys=True).encode())
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"localiser-{net.config.image_size}px-{digest.hexdigest()[:16]}"


def export_localiser(net: LocaliserNet, cache_dir: Path) -> Path:
    """The cached ONNX file of ``net``'s network (fp32; batch, height and width dynamic), exported if missing."""
    size = net.config.image_size
    names = LocaliserNetwork(net).output_names()
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, **{k: {0: "batch", 1: "points"} for k in HEAD_OUTPUTS},
            **{k: {0: "batch", 2: "rows", 3: "cols"} for k in names if k not in HEAD_OUTPUTS}}
    return export_if_missing(cache_dir / localiser_key(net) / "model.onnx", "the localiser's network",
                             lambda: LocaliserNetwork(net.eval().to("cpu")).eval(), torch.zeros(1, 3, size, size),
                             ["images"], list(names), axes)


class _StaticShapes:
    """OpenVINO runs the graph compiled for one input shape about 1.6x faster than with dynamic height/width, so
    each padded shape gets its own compiled model, made on first use (FCOS pads to multiples of 32 and the
    longer side is fixed, so there are at most 2 x size/32 of them; compiled blobs are cached on disk)."""

    def __init__(self, onnx_path: Path, threads: int | None) -> None:
        from models.openvino_core import openvino_core

        self.core = openvino_core()
        self.onnx_path = onnx_path
        self.threads = threads
        self.model = self.core.read_model(str(onnx_path))
        self.shapes: dict[tuple[int, ...], object] = {}
        self.lock = threading.Lock()

    def infer(self, images: np.ndarray) -> list[np.ndarray]:
        runner = self.shapes.get(images.shape)
        if runner is None:
            with self.lock:
                runner = self.shapes.get(images.shape) or self._compile(images.shape)
        return runner.infer(images)  # type: ignore[attr-defined]

    def compile_all(self, shapes: list[tuple[int, ...]]) -> None:
        """Compile ``shapes`` now rather than on the first photo of each (a cold compile costs a query ~0.8 s)."""
        with self.lock:
            for shape in shapes:
                if shape not in self.shapes:
                    self._compile(shape)

    def _compile(self, shape: tuple[int, ...]) -> object:
        from models.runtime_openvino import ThreadRequests, compile_for_cpu

        model = self.model.clone()
        model.reshape({"images": list(shape)})
        cache = self.onnx_path.parent / "openvino-cache"
        runner = self.shapes[shape] = ThreadRequests(compile_for_cpu(self.core, model, cache, "fp32", self.threads))
        return runner


class RuntimeLocaliser(Localiser):
    """A :class:`Localiser` whose network runs in OpenVINO or ONNX Runtime (``options.runtime``; ``auto`` picks
    as the embedder does; ``torch`` keeps the eager network). Same ``detect`` answers, up to float rounding."""

    def __init__(self, model: LocaliserNet, options: RuntimeOptions) -> None:
        super().__init__(model)
        self.runtime_name = resolve_runtime(options.runtime, torch.device("cpu"))
        self._run = None
        self._static: _StaticShapes | None = None
        if self.runtime_name == "torch":
            return
        onnx_path = export_localiser(model, options.resolved_cache_dir())
        if self.runtime_name == "openvino":
            self._static = _StaticShapes(onnx_path, options.threads)
            self._run = self._static.infer
        else:
            from models.runtime_onnx import cpu_session

            session = cpu_session(onnx_path, options.threads)
            self._run = lambda images: session.run(None, {"images": images})

    @classmethod
    def load_with(cls, path: str | Path, options: RuntimeOptions) -> RuntimeLocaliser:
        from models.localiser import load_localiser

        return cls(load_localiser(path), options)

    def padded_shapes(self) -> list[tuple[int, ...]]:
        """Every input shape the network can meet: the longer side is the configured size, the shorter side any
        size up to it, and FCOS's transform pads both to a multiple of 32."""
        net: LocaliserNet = self.model  # type: ignore[assignment]
        size = self.config.image_size
        shapes = set()
        for short in range(1, size + 1):
            for h, w in ((short, size), (size, short)):
                shapes.add(tuple(net.transform([torch.zeros(3, h, w)])[0].tensors.shape))
        return sorted(shapes)

    def warm_up(self, every_shape: bool = True) -> None:
        """Run one detection; with ``every_shape``, first make the first photo of any shape as fast as the next:
        compile the network for every padded shape (OpenVINO; the compiled blobs are cached on disk, so a restart
        only loads them: about 0.2 s a shape against about 1 s for a cold compile)."""
        if every_shape and self._static is not None:
            self._static.compile_all(self.padded_shapes())
        self.detect(Image.new("RGB", (self.config.image_size,) * 2, (128, 128, 128)))

    def input_tensor(self, image: Image.Image) -> torch.Tensor:
        """The photo as the network's [0, 1] input (longer side at the configured size), as ``detect`` makes it."""
        return _to_tensor(image, self.config.image_size)[0]

    def network_outputs(self, tensor: torch.Tensor) -> tuple[ImageList, dict[str, torch.Tensor]]:
        """FCOS's input transform (in torch) and the network (in the engine): the padded batch and the raw
        outputs by name (the head's concatenated over the pyramid levels; the mask head's logits if any)."""
        if self._run is None:
            return super().network_outputs(tensor)
        net: LocaliserNet = self.model  # type: ignore[assignment]
        images, _ = net.transform([tensor])
        outputs = self._run(np.ascontiguousarray(images.tensors.numpy(), dtype=np.float32))
        names = self._network.output_names()
        return images, {k: torch.from_numpy(np.asarray(v)) for k, v in zip(names, outputs, strict=True)}

    def predict(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._run is None:
            return super().predict(tensor)
        images, outputs = self.network_outputs(tensor)
        return self.decode(images, outputs, tensor)
