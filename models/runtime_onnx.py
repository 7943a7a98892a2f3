"""ONNX Runtime on the CPU: one session per process over the exported graph, fp32.

A session's ``run`` is thread-safe, so the service's request threads share it. The optimised graph is not
cached: ONNX Runtime's full optimisation is specific to the CPU it ran on, and a session builds in about a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from models.runtime import unit_rows
from models.runtime_export import INPUT_KIND, INPUT_NAME


def cpu_session(onnx_path: Path, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session over ``onnx_path``, fully optimised, ``threads`` per run (None: all cores)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


class OnnxRuntime:
    """The exported network in an ONNX Runtime CPU session (fp32 only: no bf16 kernels on the CPU provider)."""

    name = "onnxruntime"
    input_kind = INPUT_KIND  # pixels in 0..255; the graph normalises
    precision = "fp32"

    def __init__(self, onnx_path: Path, *, threads: int | None = None) -> None:
        self.device = torch.device("cpu")
        self.session = cpu_session(onnx_path, threads)
        self.threads = threads

    def forward(self, batch: torch.Tensor) -> np.ndarray:
        pixels = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        return unit_rows(self.session.run(None, {INPUT_NAME: pixels})[0])
