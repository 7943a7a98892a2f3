"""Inference runtimes behind ``Embedder``: which engine runs the embedding network, at which precision.

``torch`` runs the PyTorch module itself (the reference; on CUDA in bf16 with channels_last). ``openvino`` and
``onnxruntime`` run a graph exported from the served network (see ``models.runtime_export``), cached on disk
under a fingerprint of the weights, the preprocessing, the runtime and the precision, so a changed or trained
checkpoint gets its own export. ``auto`` takes PyTorch on CUDA and, on a CPU, the first installed of OpenVINO,
ONNX Runtime and PyTorch (a missing engine is logged and skipped; an engine asked for by name must be there).

Precision: ``fp32``; ``bf16`` only where the engine runs it natively on this device (an explicit request
elsewhere fails loudly); ``int8`` only when asked (OpenVINO + NNCF post-training quantisation, calibrated on
images the caller supplies); ``auto`` takes bf16 where native, fp32 otherwise.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
PRECISIONS = ("auto", "fp32", "bf16", "int8")
CPU_PREFERENCE = ("openvino", "onnxruntime", "torch")
# The Python module each engine needs; ``auto`` skips an engine whose module does not import.
ENGINE_MODULES = {"torch": "torch", "openvino": "openvino", "onnxruntime": "onnxruntime"}


class RuntimeUnavailable(RuntimeError):
    """The asked-for engine or precision cannot run here (not installed, or not supported by this device)."""


class RuntimeOptions(BaseModel):
    """How to run the network: engine, precision, threads per forward, export cache, torch.compile on CUDA."""

    model_config = ConfigDict(frozen=True)

    runtime: str = Field(default="torch", pattern=f"^({'|'.join(RUNTIMES)})$")
    precision: str = Field(default="auto", pattern=f"^({'|'.join(PRECISIONS)})$")
    threads: int | None = Field(default=None, ge=1, description="threads per forward; None: the engine's default")
    cache_dir: Path | None = Field(default=None, description="exported models; None: ~/.cache/lookalike/runtime")
    compile: bool = Field(default=True, description="torch.compile on CUDA (ignored on the CPU)")
    calibration_images: tuple[Path, ...] = Field(default=(), description="int8 only: images to calibrate on")

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "lookalike" / "runtime"


class InferenceRuntime(Protocol):
    """One engine holding one network: a batch (N,3,S,S) in, unit vectors (N,D) out.

    ``input_kind`` says which batch ``forward`` takes: ``normalised`` (float32, mean/std applied: PyTorch) or
    ``pixels`` (0..255 values, uint8 or float32; the exported graphs normalise inside). ``Embedder`` converts.
    ``forward`` may be called from several threads at once (the service shares one instance).
    """

    name: str
    precision: str
    device: torch.device
    input_kind: str

    def forward(self, batch: torch.Tensor) -> np.ndarray: ...


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """(N,D) float32 rows scaled to unit length (reduced-precision engines drift slightly off it)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def engine_installed(name: str) -> bool:
    """Whether the engine's Python package imports (a broken install counts as missing)."""
    try:
        importlib.import_module(ENGINE_MODULES[name])
    except Exception as exc:  # noqa: BLE001 - ImportError, or a native library failing to load
        log.debug("runtime %s unavailable: %s", name, exc)
        return False
    return True


def resolve_runtime(requested: str, device: torch.device,
                    installed: Callable[[str], bool] = engine_installed) -> str:
    """The engine to use: ``auto`` -> torch on CUDA, else the first installed of OpenVINO, ONNX Runtime, torch.

    An engine named explicitly must be installed and (except torch) runs on the CPU only.
    """
    if requested not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime {requested!r} (choose from {', '.join(RUNTIMES)})")
    if requested == "auto":
        if device.type == "cuda":
            return "torch"
        for name in CPU_PREFERENCE:
            if installed(name):
                if name != CPU_PREFERENCE[0]:
                    log.warning("runtime auto: %s is not installed; falling back to %s",
                                ", ".join(CPU_PREFERENCE[:CPU_PREFERENCE.index(name)]), name)
                return name
        raise RuntimeUnavailable("no inference runtime is installed")  # pragma: no cover - torch always is
    if requested != "torch" and device.type != "cpu":
        raise RuntimeUnavailable(f"runtime {requested} runs on the CPU here; use runtime torch (or auto) on {device}")
    if not installed(requested):
        raise RuntimeUnavailable(f"runtime {requested} is not installed (pip install {ENGINE_MODULES[requested]}), "
                                 "or use runtime auto, which falls back to what is installed")
    return requested


def native_bf16(runtime: str, device: torch.device) -> bool:
    """Whether ``runtime`` computes in bf16 natively on ``device`` (CUDA; a CPU with AVX512-BF16 or AMX)."""
    if runtime == "torch":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    if runtime == "openvino":
        from models.openvino_core import openvino_core

        return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return False  # ONNX Runtime's CPU provider has no bf16 kernels for these convolutions


def resolve_precision(requested: str, runtime: str, device: torch.device) -> str:
    """``auto`` -> bf16 where native, else fp32. ``bf16`` on the CPU with torch runs emulated (slow but exact
    enough to compare); with OpenVINO it must be native; int8 is OpenVINO's only."""
    if requested not in PRECISIONS:
        raise RuntimeUnavailable(f"unknown precision {requested!r} (choose from {', '.join(PRECISIONS)})")
    if requested == "auto":
        return "bf16" if native_bf16(runtime, device) else "fp32"
    if requested == "bf16" and runtime != "torch" and not native_bf16(runtime, device):
        raise RuntimeUnavailable(f"{runtime} has no native bf16 on this CPU (no AVX512-BF16/AMX); use fp32 or auto")
    if requested == "int8" and runtime != "openvino":
        raise RuntimeUnavailable(f"int8 is offered with runtime openvino only, not {runtime}")
    return requested


def create_runtime(model: torch.nn.Module, options: RuntimeOptions, device: torch.device) -> InferenceRuntime:
    """Build the engine that ``options`` resolve to on ``device`` (exporting or loading the cached graph)."""
    name = resolve_runtime(options.runtime, device)
    precision = resolve_precision(options.precision, name, device)
    if name == "torch":
        from models.runtime_torch import TorchRuntime

        return TorchRuntime(model, device, precision, threads=options.threads, compile=options.compile)
    from models.runtime_export import export_onnx

    onnx_path = export_onnx(model, options.resolved_cache_dir())
    if name == "openvino":
        from models.runtime_openvino import OpenVINORuntime

        return OpenVINORuntime(onnx_path, precision, threads=options.threads,
                               calibration=_calibration(model, options.calibration_images) if precision == "int8" else None)
    from models.runtime_onnx import OnnxRuntime

    return OnnxRuntime(onnx_path, threads=options.threads)


def _calibration(model: torch.nn.Module, images: Sequence[Path]) -> list[np.ndarray]:
    """Single-image pixel batches (float32, 0..255: the exported graph's input) for int8 calibration, through
    the one preprocessing path."""
    from models.preprocess import build_pixel_transform, load_image

    if not images:
        raise RuntimeUnavailable("int8 needs calibration images (e.g. the catalog's); none were given")
    size = model.config.image_size  # type: ignore[union-attr]
    transform = build_pixel_transform(size)
    return [transform(load_image(p, draft_size=size))[None].float().numpy() for p in images]
