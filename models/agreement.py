"""How closely two sets of embeddings of the same images agree: runtimes and precisions are checked with it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEFAULT_MIN_COSINE = 0.995


@dataclass(frozen=True)
class Agreement:
    """Row-wise cosine between two (N,D) sets of unit vectors: the mean, the worst, and how many."""

    mean: float
    min: float
    count: int

    def holds(self, min_cosine: float = DEFAULT_MIN_COSINE) -> bool:
        return self.count > 0 and self.mean >= min_cosine


def agreement(a: np.ndarray, b: np.ndarray) -> Agreement:
    """Compare row i of ``a`` with row i of ``b`` (both normalised again, so any scale is ignored)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare embeddings of shapes {a.shape} and {b.shape}")
    if len(a) == 0:
        return Agreement(float("nan"), float("nan"), 0)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    cos = (a * b).sum(axis=1)
    return Agreement(round(float(cos.mean()), 6), round(float(cos.min()), 6), len(cos))


def embed_paths(embedder: object, paths: Sequence[Path | str], batch_size: int = 16) -> np.ndarray:
    """Embed image files through ``embedder``'s own decode and preprocessing (an ``models.Embedder``)."""
    tensors = [embedder.pixels(embedder.load(str(p))) for p in paths]  # type: ignore[attr-defined]
    parts = [embedder.embed_tensors(torch.stack(tensors[i:i + batch_size]))  # type: ignore[attr-defined]
             for i in range(0, len(tensors), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)  # type: ignore[attr-defined]
