"""The FAISS index wrapper: one place that checks inputs, picks the index type and passes per-call parameters.

Ids are dense (0..N-1, the row order of the generation), so FAISS's sequential ids are the vector ids.
Per-query settings (nprobe, an id selector) go through ``SearchParameters`` and never mutate the shared index;
they are nested to reach the IVF layer through OPQ/PCA transforms and refine wrappers.

GPU: ``to_gpu_if_available`` moves an index to the GPU when FAISS was built with GPU support and sees a GPU.
FAISS GPU indexes ignore IDSelectors (and cannot remove ids), so such a VectorIndex reports
``supports_selector = False`` and a restricted search over-fetches without the selector and filters; past the
GPU's largest k it falls back to the CPU copy of the index with the selector, so a filter is never dropped and
results are never silently fewer than asked.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from indexer.overfetch import growing
from indexer.vector_store import MISSING_SCORE, IdFilter

log = logging.getLogger(__name__)

GPU_MAX_K = 2048  # the largest k FAISS GPU indexes answer
REFINE_K_FACTOR = 4  # a refine wrapper re-ranks this many times k candidates of its base index (saved with it)
OPQ_ITERATIONS = 10  # FAISS's default 50 retrains PQ 50 times (minutes on 2 cores); gains flatten after ~10


@dataclass(frozen=True)
class IndexSpec:
    """What to build: a FAISS factory string, the nprobe to search IVF indexes with, and the nprobe measured to
    reach the same recall under filters of given selectivities (``(selectivity, nprobe)`` pairs, descending)."""

    factory: str
    nprobe: int = 1
    filtered: tuple[tuple[float, int], ...] = ()

    def nprobe_for(self, selectivity: float, nlist: int) -> int:
        """The nprobe for a filter allowing ``selectivity`` of the vectors: interpolated (log-log) between the
        measured points; beyond the most selective one measured it grows with 1/sqrt(selectivity) from there
        (also the rule when nothing was measured)."""
        points = [(1.0, self.nprobe), *self.filtered]
        s = max(selectivity, 1e-9)
        if s >= 1.0:
            return min(nlist, self.nprobe)
        for (s_hi, p_hi), (s_lo, p_lo) in zip(points, points[1:]):
            if s_lo <= s <= s_hi:
                t = math.log(s_hi / s) / math.log(s_hi / s_lo)
                return min(nlist, math.ceil(math.exp(math.log(p_hi) + t * (math.log(p_lo) - math.log(p_hi))) - 1e-9))
        s_last, p_last = points[-1]
        return min(nlist, math.ceil(p_last * math.sqrt(s_last / s) - 1e-9))

    @property
    def is_ivf(self) -> bool:
        """Whether the factory has an IVF layer anywhere (``IVF..``, ``OPQ..,IVF..``, ``PCA..,IVF..,Refine(..)``)."""
        return any(part.strip().startswith("IVF") for part in self.factory.split(","))


def gpu_available() -> bool:
    """A FAISS build with GPU support (faiss-gpu) that sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "index_cpu_to_gpu") and faiss.get_num_gpus() > 0


def to_gpu_if_available(index: faiss.Index, device: int = 0) -> tuple[faiss.Index, bool]:
    """(index on the GPU, True) when a GPU can take it; (the same CPU index, False) otherwise.

    Index types the GPU does not support (some refine or transform wrappers) stay on the CPU, logged.
    """
    if not gpu_available():
        return index, False
    try:
        resources = faiss.StandardGpuResources()
        options = faiss.GpuClonerOptions()
        options.useFloat16 = False
        gpu_index = faiss.index_cpu_to_gpu(resources, device, index, options)
        gpu_index.referenced_objects = [resources]  # keep the resources alive as long as the index
        return gpu_index, True
    except (RuntimeError, AttributeError) as exc:
        log.warning("index stays on the CPU: FAISS cannot move it to the GPU (%s)", exc)
        return index, False


def ivf_layer(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF index inside ``index`` (through transforms and refine wrappers), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, TypeError):
        return None


def search_parameters(index: faiss.Index, nprobe: int | None, selector: faiss.IDSelector | None,
                      keep: list[object]) -> faiss.SearchParameters:
    """Per-call parameters shaped like ``index``: nprobe reaches the IVF layer inside OPQ/PCA and refine wrappers.

    ``keep`` collects every SWIG object made here; the caller holds it until the search returns.
    """
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        base = search_parameters(index.base_index, nprobe, selector, keep)
        params = faiss.IndexRefineSearchParameters(k_factor=float(index.k_factor), base_index_params=base, sel=selector)
    elif isinstance(index, faiss.IndexPreTransform):
        inner = search_parameters(index.index, nprobe, selector, keep)
        params = faiss.SearchParametersPreTransform(index_params=inner, sel=selector)
    elif isinstance(index, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(nprobe=int(nprobe or index.nprobe), sel=selector)
    else:
        params = faiss.SearchParameters(sel=selector)
    keep.append(params)
    return params


class VectorIndex:
    """Inner-product search over unit vectors (cosine similarity)."""

    def __init__(self, index: faiss.Index, spec: IndexSpec, *, supports_selector: bool | None = None,
                 on_gpu: bool = False, cpu_index: faiss.Index | None = None) -> None:
        self.index = index
        self.spec = spec
        self.dim = index.d
        self.on_gpu = on_gpu
        # GPU indexes ignore IDSelectors: restricted searches must over-fetch and filter there.
        self.supports_selector = (not on_gpu) if supports_selector is None else supports_selector
        self.max_fetch = GPU_MAX_K if on_gpu else None
        self.cpu_index = cpu_index  # a CPU copy that does honour selectors (kept when moved to a GPU)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, vectors: np.ndarray, spec: IndexSpec, train_sample: int = 256 * 1024, seed: int = 0,
              add_chunk: int = 262_144) -> VectorIndex:
        """Train (on a random sample) and add all vectors in id order; on a GPU machine IVF k-means runs there."""
        vectors = _as_matrix(vectors) if not isinstance(vectors, np.memmap) else vectors
        if vectors.ndim != 2:
            raise ValueError("vectors must be a 2-D array")
        index = faiss.index_factory(vectors.shape[1], spec.factory, faiss.METRIC_INNER_PRODUCT)
        _configure(index)
        if not index.is_trained:
            rng = np.random.default_rng(seed)
            if len(vectors) <= train_sample:
                sample = _as_matrix(vectors)
            else:
                sample = _as_matrix(vectors[np.sort(rng.choice(len(vectors), train_sample, replace=False))])
            ivf = ivf_layer(index)
            if ivf is not None and gpu_available():
                clustering, moved = to_gpu_if_available(faiss.IndexFlatIP(ivf.d))
                if moved:
                    ivf.clustering_index = clustering
            index.train(sample)
        for start in range(0, len(vectors), add_chunk):
            index.add(_as_matrix(vectors[start:start + add_chunk]))
        return cls(index, spec)

    def to_gpu_if_available(self) -> VectorIndex:
        """This index on a GPU when one can take it (keeping the CPU copy for filtered searches), else itself."""
        if self.on_gpu:
            return self
        gpu_index, moved = to_gpu_if_available(self.index)
        if not moved:
            return self
        return VectorIndex(gpu_index, self.spec, on_gpu=True, cpu_index=self.index)

    def save(self, path: Path) -> None:
        index = faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index
        faiss.write_index(index, str(path))

    @classmethod
    def load(cls, path: Path, spec: IndexSpec, mmap: bool = False) -> VectorIndex:
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        return cls(faiss.read_index(str(path), flags), spec)

    def search(self, queries: np.ndarray, k: int, allowed_ids: IdFilter | np.ndarray | None = None,
               nprobe: int | None = None, complete: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; ids of -1 mark missing results. ``allowed_ids`` restricts the search.

        With ``complete`` (the default), an IVF search that finds fewer than k results probes more lists until it
        has k or has probed them all; ``complete=False`` keeps exactly the nprobe given (for measurements).
        """
        queries = _as_matrix(queries)
        if queries.shape[1] != self.dim:
            raise ValueError(f"query dimension {queries.shape[1]} does not match the index ({self.dim})")
        if k < 1:
            raise ValueError("k must be at least 1")
        k = min(k, max(self.ntotal, 1))
        nprobe = nprobe or self.spec.nprobe
        allowed = None if allowed_ids is None else (
            allowed_ids if isinstance(allowed_ids, IdFilter) else IdFilter.from_ids(allowed_ids))
        want = min(k, self.ntotal if allowed is None else len(allowed))
        ivf = ivf_layer(self.index) if self.spec.is_ivf and not self.on_gpu else None
        # IVF only looks into nprobe lists: a restrictive filter can leave them short of k results that exist
        # elsewhere. Probe more lists until k are found or every list was probed.
        for probes in growing(nprobe, ivf.nlist if complete and ivf is not None else nprobe):
            if allowed is None or self.supports_selector:
                scores, ids = self._search(self.index, queries, k, probes, allowed)
            else:
                scores, ids = self._search_filtered(queries, k, probes, allowed)
            if int((ids >= 0).sum(axis=1).min()) >= want:
                break
        return scores, ids

    def _search(self, index: faiss.Index, queries: np.ndarray, k: int, nprobe: int | None,
                allowed: IdFilter | None) -> tuple[np.ndarray, np.ndarray]:
        keep: list[object] = []
        selector = None if allowed is None else id_selector(allowed, self.ntotal, keep)
        return faiss_search(index, queries, k, search_parameters(index, nprobe, selector, keep))

    def _search_filtered(self, queries: np.ndarray, k: int, nprobe: int | None,
                         allowed: IdFilter) -> tuple[np.ndarray, np.ndarray]:
        """Without a selector: fetch more until every query has k allowed hits or the index has no more."""
        out_scores = np.full((len(queries), k), MISSING_SCORE, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        todo = np.arange(len(queries))
        limit = self.ntotal
        for fetch in growing(k * 4, limit):
            if self.max_fetch is not None and fetch > self.max_fetch:
                if self.cpu_index is None:
                    raise RuntimeError(f"a filtered search needs more than {self.max_fetch} results per query and "
                                       "this index keeps no CPU copy to apply the filter")
                scores, ids = self._search(self.cpu_index, queries[todo], k, nprobe, allowed)
                out_scores[todo], out_ids[todo] = scores, ids
                break
            scores, ids = self._search(self.index, queries[todo], fetch, nprobe, None)
            ok = allowed.contains(ids.reshape(-1)).reshape(ids.shape) & (ids >= 0)
            found = ok.sum(axis=1)
            # Done: k allowed hits, or the index returned fewer than asked (nothing more to find), or all asked.
            finished = (found >= k) | ((ids >= 0).sum(axis=1) < fetch) | (fetch >= limit)
            for row in np.flatnonzero(finished):
                keep_cols = np.flatnonzero(ok[row])[:k]
                q = todo[row]
                out_scores[q, :len(keep_cols)] = scores[row, keep_cols]
                out_ids[q, :len(keep_cols)] = ids[row, keep_cols]
            todo = todo[~finished]
            if not len(todo):
                break
        return out_scores, out_ids


def id_selector(allowed: IdFilter, ntotal: int, keep: list[object]) -> faiss.IDSelector:
    """A FAISS selector for ``allowed``: a bitmap (O(1) per id) for large sets, a hash set for small ones.

    ``keep`` collects the selector and its buffer; the caller holds it until the search returns.
    """
    if allowed.has_mask or len(allowed) * 64 > ntotal:
        bits = np.packbits(allowed.mask(ntotal), bitorder="little")
        selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
        keep.append(bits)
    else:
        selector = faiss.IDSelectorBatch(allowed.ids)
    keep.append(selector)
    return selector


def faiss_search(index: faiss.Index, queries: np.ndarray, k: int,
                 params: faiss.SearchParameters | None = None) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's own search with per-call parameters.

    faiss.contrib.torch_utils (imported by pytorch-metric-learning) swaps Index.search for a torch-aware version
    without ``params`` and keeps FAISS's own as ``search_numpy``: call FAISS's own.
    """
    search = getattr(index, "search_numpy", index.search)
    return search(queries, k, params=params)


def _configure(index: faiss.Index) -> None:
    """Build-time settings the factory string cannot carry: refine depth and OPQ training effort."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        index.k_factor = float(REFINE_K_FACTOR)
        _configure(index.base_index)
    elif isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            transform = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(transform, faiss.OPQMatrix):
                transform.niter = OPQ_ITERATIONS
        _configure(index.index)


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2:
        raise ValueError("vectors must be a 2-D array")
    return vectors
