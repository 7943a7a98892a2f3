"""The FAISS index wrapper: one place that checks inputs, picks the index type and passes per-call parameters.

Ids are dense (0..N-1, the row order of the generation), so FAISS's sequential ids are the vector ids.
Per-query settings (nprobe, an id selector) go through ``SearchParameters`` and never mutate the shared index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np


@dataclass(frozen=True)
class IndexSpec:
    """What to build: a FAISS factory string, and the nprobe to search IVF indexes with."""

    factory: str
    nprobe: int = 1

    @property
    def is_ivf(self) -> bool:
        return self.factory.startswith("IVF")


def choose_index_spec(count: int, flat_threshold: int = 200_000) -> IndexSpec:
    """Exact search while it is cheap; an IVF index with about 4*sqrt(N) lists beyond."""
    if count <= flat_threshold:
        return IndexSpec("Flat")
    nlist = int(min(65536, 2 ** round(math.log2(4 * math.sqrt(count)))))
    return IndexSpec(f"IVF{nlist},Flat", nprobe=max(8, nlist // 32))


class VectorIndex:
    """Inner-product search over unit vectors (cosine similarity)."""

    def __init__(self, index: faiss.Index, spec: IndexSpec) -> None:
        self.index = index
        self.spec = spec
        self.dim = index.d

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, vectors: np.ndarray, spec: IndexSpec, train_sample: int = 256 * 1024, seed: int = 0) -> VectorIndex:
        """Train (on a random sample for IVF) and add all vectors in id order."""
        vectors = _as_matrix(vectors)
        index = faiss.index_factory(vectors.shape[1], spec.factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            rng = np.random.default_rng(seed)
            sample = vectors if len(vectors) <= train_sample else vectors[rng.choice(len(vectors), train_sample, replace=False)]
            index.train(sample)
        index.add(vectors)
        return cls(index, spec)

    def save(self, path: Path) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, spec: IndexSpec, mmap: bool = False) -> VectorIndex:
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        return cls(faiss.read_index(str(path), flags), spec)

    def search(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; ids of -1 mark missing results. ``allowed_ids`` restricts the search."""
        queries = _as_matrix(queries)
        if queries.shape[1] != self.dim:
            raise ValueError(f"query dimension {queries.shape[1]} does not match the index ({self.dim})")
        if k < 1:
            raise ValueError("k must be at least 1")
        k = min(k, max(self.ntotal, 1))
        selector = None
        if allowed_ids is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
        if self.spec.is_ivf:
            params = faiss.SearchParametersIVF(nprobe=nprobe or self.spec.nprobe, sel=selector)
        else:
            params = faiss.SearchParameters(sel=selector)
        scores, ids = self.index.search(queries, k, params=params)
        return scores, ids


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2:
        raise ValueError("vectors must be a 2-D array")
    return vectors


def exact_top_k(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of one query among the given (vector, id) pairs, best first."""
    if len(ids) == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    scores = np.asarray(vectors, dtype=np.float32) @ np.asarray(query, dtype=np.float32).reshape(-1)
    k = min(k, len(ids))
    top = np.argpartition(-scores, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
    order = top[np.lexsort((np.asarray(ids)[top], -scores[top]))]
    return scores[order], np.asarray(ids, dtype=np.int64)[order]
