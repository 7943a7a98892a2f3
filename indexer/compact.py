"""Compact vectors: the generation's transform from embeddings to the vectors the store keeps and searches.

A PCA learned on the catalog at index time (optionally whitened) maps the network's embeddings (1280-d for
EfficientNet-Lite0) to ``dim`` dimensions, renormalised to unit length so scores stay cosine similarities.
Catalog vectors, delta rows and every query go through the same transform; it is saved with the generation
(``indexer.generations.COMPACT``) and named in the manifest, so a generation is never searched with another transform.

The default, PCA-whitening to 128 dimensions (``DEFAULT_COMPACT_DIM``, ``DEFAULT_COMPACT_WHITEN``), is the
smallest row of ``bench/demo_quality.py --compact`` that keeps the demo's Recall@1 within 0.5 points of the
1280-d embeddings (README "Compact vectors"). A catalog with fewer than ``MIN_ROWS_PER_DIM`` rows per output
dimension keeps its embeddings (a covariance from so few rows is noise, and whitening would amplify it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.atomic import atomic_path

DEFAULT_COMPACT_DIM: int | None = 128
DEFAULT_COMPACT_WHITEN = True
MIN_ROWS_PER_DIM = 4  # fewer catalog rows than this per output dimension: no PCA (the identity)
FIT_SAMPLE = 100_000  # rows the PCA is fitted on (a seeded sample): covariance needs far fewer than N


@dataclass(frozen=True)
class CompactTransform:
    """x -> normalise((x - mean) @ components.T [/ scales]); ``components`` None is the identity."""

    mean: np.ndarray | None
    components: np.ndarray | None  # (dim, input_dim), rows are principal axes
    scales: np.ndarray | None      # (dim,) standard deviations, when whitened

    @property
    def is_identity(self) -> bool:
        return self.components is None

    def output_dim(self, input_dim: int) -> int:
        return input_dim if self.components is None else int(self.components.shape[0])

    def describe(self) -> str:
        if self.components is None:
            return "identity"
        kind = "pca-whiten" if self.scales is not None else "pca"
        return f"{kind}{self.components.shape[0]}"

    @classmethod
    def identity(cls) -> CompactTransform:
        return cls(None, None, None)

    @classmethod
    def fit(cls, vectors: np.ndarray, dim: int | None, *, whiten: bool = False, sample: int = FIT_SAMPLE,
            seed: int = 0) -> CompactTransform:
        """PCA to ``dim`` dimensions fitted on a seeded sample of ``vectors`` (may be a memory map); the identity
        when ``dim`` is None, not below the input dimension, or above 1/MIN_ROWS_PER_DIM of the rows."""
        if dim is None or dim >= vectors.shape[1] or len(vectors) < MIN_ROWS_PER_DIM * dim:
            return cls.identity()
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(vectors), min(sample, len(vectors)), replace=False))
        x = np.asarray(vectors[rows], dtype=np.float64)
        mean = x.mean(axis=0)
        covariance = np.cov(x - mean, rowvar=False)
        values, axes = np.linalg.eigh(covariance)
        top = np.argsort(values)[::-1][:dim]
        scales = np.sqrt(np.maximum(values[top], 1e-12)).astype(np.float32) if whiten else None
        return cls(mean.astype(np.float32), axes[:, top].T.astype(np.float32), scales)

    def apply(self, vectors: np.ndarray, chunk: int = 65_536) -> np.ndarray:
        """Transform (n, input_dim) or (input_dim,) embeddings; float32, unit rows, chunked for memory maps."""
        x = np.asarray(vectors) if not isinstance(vectors, np.memmap) else vectors
        single = x.ndim == 1
        x = x[None, :] if single else x
        if self.components is None:
            out = np.ascontiguousarray(x, dtype=np.float32)
        else:
            out = np.empty((len(x), self.components.shape[0]), dtype=np.float32)
            for start in range(0, len(x), chunk):
                block = (np.asarray(x[start:start + chunk], dtype=np.float32) - self.mean) @ self.components.T
                if self.scales is not None:
                    block /= self.scales
                norms = np.linalg.norm(block, axis=1, keepdims=True)
                out[start:start + chunk] = block / np.maximum(norms, 1e-12)
        return out[0] if single else out

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            if self.components is None:
                np.savez(handle, kind=np.array("identity"))
            else:
                np.savez(handle, kind=np.array("pca"), mean=self.mean, components=self.components,
                         scales=self.scales if self.scales is not None else np.zeros(0, np.float32))

    @classmethod
    def load(cls, path: Path) -> CompactTransform:
        """The saved transform; the identity for generations made before compact vectors (no file)."""
        if not path.is_file():
            return cls.identity()
        with np.load(path) as saved:
            if str(saved["kind"]) == "identity":
                return cls.identity()
            scales = saved["scales"]
            return cls(saved["mean"], saved["components"], scales if len(scales) else None)
