"""PyTorch as a runtime: the reference on the CPU, and the engine on CUDA (bf16, channels_last, torch.compile).

On CUDA the network runs in bf16 autocast with channels_last memory (tensor-core convolutions) and, unless
turned off, through ``torch.compile``, which fuses the many small depthwise/BN/ReLU6 kernels of
EfficientNet-Lite (dynamic batch sizes, so one compiled graph serves all). On the CPU, fp32 is the reference
every other engine is checked against; bf16 there runs through autocast (emulated without AVX512-BF16/AMX).
"""

from __future__ import annotations

import copy
import logging
import threading
from contextlib import nullcontext

import numpy as np
import torch

from models.runtime import unit_rows

log = logging.getLogger(__name__)


class TorchRuntime:
    """The PyTorch module itself, on the CPU or CUDA."""

    name = "torch"
    input_kind = "normalised"  # the module takes mean/std-normalised float input

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str = "fp32", *,
                 threads: int | None = None, compile: bool = True) -> None:
        self.device = device
        self.precision = precision
        self.threads = threads  # informational: torch's thread count is per process (set by the caller)
        # A copy on CUDA: the caller's module stays on the CPU (for export, or as the fp32 reference).
        self.module = (copy.deepcopy(model) if device.type == "cuda" else model).eval().to(device)
        self.forward_module: torch.nn.Module = self.module
        if device.type == "cuda":
            self.module = self.module.to(memory_format=torch.channels_last)
            self.forward_module = self.module
            if compile:
                self.forward_module = torch.compile(self.module, dynamic=True)  # type: ignore[assignment]
        self._compile_lock = threading.Lock()
        self._compiled_once = not (device.type == "cuda" and compile)

    def forward(self, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            batch = batch.to(self.device, non_blocking=True)
            if self.device.type == "cuda":
                batch = batch.to(memory_format=torch.channels_last)
            autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16"
                        else nullcontext())
            with autocast:
                out = self._first_call(batch) if not self._compiled_once else self.forward_module(batch)
        return unit_rows(out.float().cpu().numpy())

    def _first_call(self, batch: torch.Tensor) -> torch.Tensor:
        """The first compiled call compiles (others wait rather than compile again); a failure falls back to eager."""
        with self._compile_lock:
            try:
                out = self.forward_module(batch)
            except Exception as exc:  # noqa: BLE001 - no Triton, an unsupported op...: eager still works
                log.warning("torch.compile failed (%s); running eager", exc)
                self.forward_module = self.module
                out = self.module(batch)
            self._compiled_once = True
            return out
