"""OpenVINO on the CPU: the exported graph compiled once per process, its compiled blob cached on disk.

``CACHE_DIR`` makes OpenVINO keep the compiled model beside the export; the next process with the same
graph and settings loads it instead of compiling. One compiled model serves every thread: each thread gets
its own infer request (requests are not thread-safe, the compiled model is).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import numpy as np
import openvino as ov
import torch

from models.openvino_core import openvino_core
from models.runtime import RuntimeUnavailable, unit_rows
from models.runtime_export import INPUT_KIND

log = logging.getLogger(__name__)

OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: quantised ops in int8, the rest in f32


def compile_for_cpu(core: ov.Core, source: Path | ov.Model, cache_dir: Path, precision: str = "fp32",
                    threads: int | None = None) -> ov.CompiledModel:
    """``source`` (ONNX or IR file, or a model in memory) compiled for the CPU for latency: one stream, so a
    forward uses all its threads (batches included); the compiled blob is kept in ``cache_dir`` for the next
    process."""
    config: dict[str, object] = {
        "CACHE_DIR": str(cache_dir),
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
    }
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return core.compile_model(source if isinstance(source, ov.Model) else str(source), "CPU", config)


class ThreadRequests:
    """One infer request per calling thread over one compiled model (requests are not thread-safe)."""

    def __init__(self, compiled: ov.CompiledModel) -> None:
        self.compiled = compiled
        self._local = threading.local()

    def infer(self, inputs: np.ndarray) -> list[np.ndarray]:
        """Every output of the graph for one input array (shared, not copied, into the request)."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer({0: inputs}, share_inputs=True)
        return [np.array(result[i]) for i in range(len(self.compiled.outputs))]


class OpenVINORuntime:
    """The network compiled by OpenVINO for the CPU, at fp32, bf16 (native only) or int8 (NNCF, when asked)."""

    name = "openvino"
    input_kind = INPUT_KIND  # pixels in 0..255; the graph normalises

    def __init__(self, onnx_path: Path, precision: str = "fp32", *, threads: int | None = None,
                 calibration: list[np.ndarray] | None = None) -> None:
        self.precision = precision
        self.device = torch.device("cpu")
        self.core = openvino_core()
        source = quantized_model(self.core, onnx_path, calibration) if precision == "int8" else onnx_path
        self.compiled = compile_for_cpu(self.core, source, onnx_path.parent / "openvino-cache", precision, threads)
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self.requests = ThreadRequests(self.compiled)

    def forward(self, batch: torch.Tensor) -> np.ndarray:
        pixels = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        return unit_rows(self.requests.infer(pixels)[0])


def quantized_model(core: ov.Core, onnx_path: Path, calibration: list[np.ndarray] | None) -> Path:
    """An int8 IR of the graph (NNCF post-training quantisation), cached per calibration set.

    GeM pooling, the head and L2 normalisation are kept in float (``ignored_scope``): quantising the
    pooled features costs agreement for no measurable speed.
    """
    if not calibration:
        raise ValueError("int8 quantisation needs calibration images")
    digest = hashlib.sha256()
    for batch in calibration:
        digest.update(np.ascontiguousarray(batch, dtype=np.float32).tobytes())
    path = onnx_path.parent / f"int8-{digest.hexdigest()[:12]}.xml"
    if path.is_file():
        return path
    try:
        import nncf
    except ImportError as exc:
        raise RuntimeUnavailable("int8 needs NNCF: pip install 'lookalike[int8]'") from exc
    model = core.read_model(str(onnx_path))
    head = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"]
    quantized = nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration),
                              preset=nncf.QuantizationPreset.MIXED,
                              ignored_scope=nncf.IgnoredScope(names=head, validate=False))
    tmp = path.with_name(path.stem + ".tmp.xml")
    ov.save_model(quantized, str(tmp), compress_to_fp16=False)
    tmp.with_suffix(".bin").replace(path.with_suffix(".bin"))
    tmp.replace(path)
    log.info("quantised %s to int8 on %d calibration images", onnx_path.parent.name, len(calibration))
    return path
