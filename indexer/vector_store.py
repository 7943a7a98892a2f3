"""The vector-store seam: the one interface the planner and the service search, add and remove vectors through.

A ``VectorStore`` holds one generation's vectors under dense int64 ids (base rows 0..N-1, delta rows above) in
the generation's compact space (see ``indexer.compact``): queries arrive already transformed. Backends (FAISS
on the CPU, FAISS on a GPU, Milvus, ...) implement it; callers never branch on which one they have.

``BaseVectorStore`` is a template method (as pytorch-metric-learning's ``BaseMetricLossFunction.forward``
calls ``compute_loss``): its public methods validate and normalise inputs once (dimension, dtype, k, ids,
filters) and call one small hook per operation (``_search``, ``_add``, ``_remove``, ``_vectors``). A backend
subclasses it and implements the hooks, so every backend rejects the same bad inputs with the same errors.

Search contract (every backend, checked by the planner contract tests in tests/indexer/test_vector_store.py):
``search`` returns (scores, ids) of shape (queries, k), best first, ties broken by the smaller id, -1 /
``MISSING_SCORE`` padding where fewer than k vectors are allowed; it never returns a removed id or one
outside ``allowed_ids``, and with ``SearchParams(exact=True)`` the result is the exact top-k.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self, runtime_checkable

import numpy as np

MISSING_SCORE = np.float32(np.finfo(np.float32).min)  # the score of a missing result (id -1)


@dataclass(frozen=True)
class SearchParams:
    """Per-call search settings; the store's tuned defaults apply to what is left as None."""

    exact: bool = False          # score every allowed vector exactly (the planner asks when that is cheaper)
    nprobe: int | None = None    # IVF lists to probe (None: the nprobe tuned at build time)
    complete: bool = True        # probe more lists when a filter leaves fewer than k; False only for measuring


class IdFilter:
    """A set of allowed ids, held as a sorted unique array or a boolean mask (each derived lazily, once).

    Masks make intersections and membership O(1) per id instead of a sort (``np.unique``/``np.isin``); id
    arrays suit small sets and backends that take id lists. Immutable once made.
    """

    __slots__ = ("_ids", "_mask", "_count")

    def __init__(self, *, ids: np.ndarray | None = None, mask: np.ndarray | None = None) -> None:
        if (ids is None) == (mask is None):
            raise ValueError("give exactly one of ids (sorted, unique) or mask")
        self._ids = ids
        self._mask = mask
        self._count = len(ids) if ids is not None else int(np.count_nonzero(mask))

    @classmethod
    def from_ids(cls, ids: Sequence[int] | np.ndarray) -> IdFilter:
        """From any ids (unsorted, repeated): validated non-negative int64."""
        array = as_ids(ids)
        if array.size > 1 and not bool(np.all(array[1:] > array[:-1])):
            array = np.unique(array)
        return cls(ids=array)

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> IdFilter:
        """From a boolean mask over ids 0..len(mask)-1."""
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.ndim != 1:
            raise ValueError("an id mask must be a 1-D boolean array")
        return cls(mask=mask)

    def __len__(self) -> int:
        return self._count

    @property
    def has_mask(self) -> bool:
        """Whether the set is held as a mask (cheap to intersect, O(N) to list)."""
        return self._mask is not None

    @property
    def ids(self) -> np.ndarray:
        """The allowed ids, sorted ascending (int64)."""
        if self._ids is None:
            self._ids = np.flatnonzero(self._mask).astype(np.int64, copy=False)
        return self._ids

    def mask(self, size: int) -> np.ndarray:
        """A boolean mask of length ``size`` (ids at or past ``size`` are dropped; read-only view when possible)."""
        if self._mask is None:
            mask = np.zeros(max(size, 0), dtype=bool)
            mask[self._ids[self._ids < size]] = True
            return mask
        if len(self._mask) >= size:
            return self._mask[:size]
        return np.concatenate([self._mask, np.zeros(size - len(self._mask), dtype=bool)])

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Membership of each of ``ids`` (any order), as a boolean array."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._mask is not None:
            inside = (ids >= 0) & (ids < len(self._mask))
            out = np.zeros(len(ids), dtype=bool)
            out[inside] = self._mask[ids[inside]]
            return out
        position = np.searchsorted(self._ids, ids)
        return (position < len(self._ids)) & (self._ids[np.minimum(position, len(self._ids) - 1)] == ids)


@runtime_checkable
class VectorStore(Protocol):
    """What the planner and the service need of a vector engine (see the module docstring for the contract)."""

    dim: int
    supports_filter: bool  # the engine applies ``allowed_ids`` natively (else it over-fetches and filters)

    @property
    def ntotal(self) -> int: ...           # live vectors (base minus removed, plus added)

    @property
    def memory_bytes(self) -> int: ...     # resident bytes of vectors, codes and index structures

    def search(self, queries: np.ndarray, k: int, allowed_ids: IdFilter | np.ndarray | Sequence[int] | None = None,
               params: SearchParams | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def add(self, vectors: np.ndarray, ids: np.ndarray | Sequence[int]) -> None: ...

    def remove(self, ids: np.ndarray | Sequence[int]) -> int: ...

    def vectors(self, ids: np.ndarray | Sequence[int]) -> np.ndarray: ...

    def prefers_exact(self, allowed: int) -> bool: ...  # exact scoring of that many ids is cheaper than the ANN

    def save(self, path: Path) -> None: ...

    @classmethod
    def load(cls, path: Path) -> Self: ...

    def close(self) -> None: ...  # release connections and handles; the store is not used afterwards


class BaseVectorStore(ABC):
    """Validates every call once and delegates to the backend's hooks (template method)."""

    dim: int
    supports_filter: bool = True

    # --- public API (validation) --------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, allowed_ids: IdFilter | np.ndarray | Sequence[int] | None = None,
               params: SearchParams | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; see the module docstring for the contract."""
        queries = self._queries(queries)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, not {k!r}")
        allowed = None if allowed_ids is None else (
            allowed_ids if isinstance(allowed_ids, IdFilter) else IdFilter.from_ids(allowed_ids))
        k = int(k)
        if (allowed is not None and len(allowed) == 0) or self.ntotal == 0:
            return empty_result(len(queries), k)
        scores, ids = self._search(queries, k, allowed, params or SearchParams())
        if scores.shape != (len(queries), k) or ids.shape != (len(queries), k):
            raise RuntimeError(f"{type(self).__name__}._search returned {ids.shape}, expected {(len(queries), k)}")
        return scores, ids

    def add(self, vectors: np.ndarray, ids: np.ndarray | Sequence[int]) -> None:
        """Add (or replace) vectors under ``ids``; searchable at once."""
        vectors = self._queries(vectors)
        ids = self._ids(ids)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids given to add must be distinct")
        if len(ids):
            self._add(vectors, ids)

    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Remove vectors by id (unknown ids are ignored); returns how many were removed."""
        ids = self._ids(ids)
        return self._remove(np.unique(ids)) if len(ids) else 0

    def vectors(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """The stored (compact-space, float32) vectors of live ids; KeyError for an id that is not live."""
        ids = self._ids(ids)
        return self._vectors(ids) if len(ids) else np.zeros((0, self.dim), dtype=np.float32)

    def prefers_exact(self, allowed: int) -> bool:
        """Whether scoring ``allowed`` ids exactly should cost less than an ANN search under that filter (the
        planner's cost estimate). Without a cost model a backend says yes, and the planner's
        ``exact_threshold`` alone decides; backends with one (FAISS) override it."""
        return True

    def close(self) -> None:
        """Release what the store holds beyond its Python objects (a server connection); idempotent. FAISS
        holds nothing else: its memory goes with the object."""

    # --- hooks (backends) ---------------------------------------------------------------------------------
    @property
    @abstractmethod
    def ntotal(self) -> int: ...

    @property
    @abstractmethod
    def memory_bytes(self) -> int: ...

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int, allowed: IdFilter | None,
                params: SearchParams) -> tuple[np.ndarray, np.ndarray]:
        """Queries are (n, dim) float32 C-contiguous, k >= 1, ``allowed`` non-empty or None."""

    @abstractmethod
    def _add(self, vectors: np.ndarray, ids: np.ndarray) -> None: ...

    @abstractmethod
    def _remove(self, ids: np.ndarray) -> int: ...

    @abstractmethod
    def _vectors(self, ids: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def save(self, path: Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, path: Path) -> Self: ...

    # --- shared validation ----------------------------------------------------------------------------------
    def _queries(self, vectors: np.ndarray) -> np.ndarray:
        array = np.asarray(vectors)
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"vectors must be floating point, not {array.dtype}")
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2:
            raise ValueError(f"vectors must be 1-D or 2-D, not {array.ndim}-D")
        if array.shape[1] != self.dim:
            raise ValueError(f"vector dimension {array.shape[1]} does not match the store ({self.dim})")
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            raise ValueError("vectors must be finite")
        return array

    @staticmethod
    def _ids(ids: np.ndarray | Sequence[int]) -> np.ndarray:
        return as_ids(ids)


def as_ids(ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """Ids as a flat int64 array; ValueError unless they are non-negative integers."""
    array = np.asarray(ids)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError("ids must be integers")
    array = array.astype(np.int64, copy=False).reshape(-1)
    if array.size and int(array.min()) < 0:
        raise ValueError("ids must be non-negative")
    return array


def empty_result(queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) with nothing found: MISSING_SCORE and -1 everywhere."""
    return np.full((queries, k), MISSING_SCORE, dtype=np.float32), np.full((queries, k), -1, dtype=np.int64)


def merge_top_k(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-query (scores, ids) blocks into one top-k, best first, ties by the smaller id, -1 padded."""
    scores = np.concatenate([s for s, _ in parts], axis=1)
    ids = np.concatenate([i for _, i in parts], axis=1)
    scores = np.where(ids >= 0, scores, MISSING_SCORE)
    # Sort by score descending, then id ascending; missing (-1) entries last.
    missing = ids < 0
    order = np.lexsort((np.where(missing, np.iinfo(np.int64).max, ids), -scores.astype(np.float64), missing), axis=1)
    order = order[:, :k]
    out_scores = np.take_along_axis(scores, order, 1)
    out_ids = np.take_along_axis(ids, order, 1)
    if out_ids.shape[1] < k:
        pad_s, pad_i = empty_result(len(ids), k - out_ids.shape[1])
        out_scores, out_ids = np.concatenate([out_scores, pad_s], 1), np.concatenate([out_ids, pad_i], 1)
    return out_scores.astype(np.float32, copy=False), out_ids
