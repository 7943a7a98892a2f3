"""Which FAISS index for how many vectors and how much memory, and a build that measures what it got.

In the spirit of autofaiss: exact ``Flat`` while it is cheap (below ``flat_threshold`` vectors, default 1M);
beyond, ``IVF{nlist},Flat`` (nlist ~ 4*sqrt(N), with an HNSW coarse quantizer once nlist is large) when the
full vectors fit the memory budget; when they do not, ``OPQ{m}_{d},IVF{nlist},PQ{m}x8np`` codes (``np``: no polysemous training, which
we never use and which costs more than the rest of training) re-ranked by a
refine step: ``Refine(SQ8)`` (8-bit codes, d bytes a vector) by default. ``Refine(Flat)`` (exact floats) can be
asked for, but it holds 4*d bytes a vector, more than IVF-Flat itself, so it never fits a budget IVF-Flat misses.

After building, recall@10 against exact search is measured on held-out queries (a seeded sample of the
vectors themselves) and nprobe is raised until recall@10 reaches the target (0.95) where the index can.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from indexer.exact import exact_top_k
from indexer.vector_index import IndexSpec, VectorIndex, ivf_layer

log = logging.getLogger(__name__)

DEFAULT_FLAT_THRESHOLD = 1_000_000
HNSW_QUANTIZER_NLIST = 16_384   # from this many lists the coarse quantizer is an HNSW graph, not a flat scan
TARGET_RECALL = 0.95
RECALL_K = 10
MIN_POINTS_PER_LIST = 39        # FAISS k-means warns below this many training points per centroid


class IndexBudgetError(ValueError):
    """No index kind fits the memory budget for this many vectors."""


@dataclass(frozen=True)
class IndexChoice:
    """The chosen index, why, and what it should cost in memory."""

    spec: IndexSpec
    kind: str             # flat | ivf_flat | ivf_hnsw_flat | opq_ivf_pq_rflat | opq_ivf_pq_rsq8 | opq_ivf_pq
    memory_bytes: int
    reason: str


@dataclass(frozen=True)
class IndexReport:
    """What a build measured; goes into the generation manifest."""

    factory: str
    kind: str
    nprobe: int
    recall_at_10: float | None
    memory_bytes: int
    build_seconds: float
    tune_seconds: float
    train_size: int
    queries: int


def nlist_for(count: int) -> int:
    """About 4*sqrt(N) inverted lists (a power of two), never more than the data can train."""
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(count), 1)))
    trainable = 2 ** int(math.log2(max(count // MIN_POINTS_PER_LIST, 1)))
    return int(min(nlist, 65_536, trainable))


def pq_size(dim: int) -> int:
    """Bytes of PQ code per vector: about dim/4, at most 64, and a divisor of dim."""
    m = min(64, max(1, dim // 4))
    while dim % m:
        m -= 1
    return m


def _ivf_prefix(nlist: int) -> str:
    return f"IVF{nlist}_HNSW32" if nlist >= HNSW_QUANTIZER_NLIST else f"IVF{nlist}"


def estimate_memory(kind: str, count: int, dim: int, nlist: int = 0) -> int:
    """Resident bytes of an index of ``kind`` holding ``count`` vectors (codes, ids, centroids, graphs)."""
    centroids = nlist * dim * 4 + (nlist * 32 * 2 * 4 if nlist >= HNSW_QUANTIZER_NLIST else 0)
    ids = 8 * count
    m = pq_size(dim)
    if kind == "flat":
        return 4 * dim * count
    if kind in ("ivf_flat", "ivf_hnsw_flat"):
        return count * 4 * dim + ids + centroids
    opq = 4 * dim * dim
    pq = m * count + ids + centroids + opq + 256 * dim * 4
    return pq + {"opq_ivf_pq_rflat": 4 * dim * count, "opq_ivf_pq_rsq8": dim * count + 8 * dim}.get(kind, 0)


def choose_index(count: int, dim: int, *, flat_threshold: int = DEFAULT_FLAT_THRESHOLD,
                 memory_budget_bytes: int | None = None, refine: str = "SQ8") -> IndexChoice:
    """The cheapest index that keeps recall high for ``count`` vectors of ``dim`` within the memory budget.

    ``refine`` is the re-ranking codec when the budget forces PQ codes: ``SQ8`` (d bytes a vector, recall close
    to exact), ``Flat`` (exact floats; it only fits where IVF-Flat nearly would, so mostly for speed at huge N)
    or ``none``. If even that does not fit, plain OPQ+IVF-PQ is tried before giving up.
    """
    budget = memory_budget_bytes if memory_budget_bytes is not None else math.inf
    flat = estimate_memory("flat", count, dim)
    if count <= flat_threshold and flat <= budget:
        return IndexChoice(IndexSpec("Flat"), "flat", flat, f"{count} <= {flat_threshold} vectors: exact search")
    nlist = nlist_for(count)
    prefix = _ivf_prefix(nlist)
    nprobe = max(1, min(nlist, max(8, nlist // 32)))  # a starting point; the build tunes it
    ivf_kind = "ivf_hnsw_flat" if nlist >= HNSW_QUANTIZER_NLIST else "ivf_flat"
    ivf = estimate_memory(ivf_kind, count, dim, nlist)
    if ivf <= budget:
        return IndexChoice(IndexSpec(f"{prefix},Flat", nprobe), ivf_kind, ivf,
                         f"{count} vectors: IVF over full vectors fits {_gb(ivf)} within {_gb(budget)}")
    m = pq_size(dim)
    refine_kinds = {"Flat": "opq_ivf_pq_rflat", "SQ8": "opq_ivf_pq_rsq8"}
    if refine not in (*refine_kinds, "none"):
        raise ValueError(f"unknown refine codec {refine!r} (Flat, SQ8 or none)")
    tiers = ([(refine_kinds[refine], f",Refine({refine})")] if refine != "none" else []) + [("opq_ivf_pq", "")]
    for kind, suffix in tiers:
        need = estimate_memory(kind, count, dim, nlist)
        if need <= budget:
            return IndexChoice(IndexSpec(f"OPQ{m}_{dim},{prefix},PQ{m}x8np{suffix}", nprobe), kind, need,
                             f"{count} vectors: full vectors need {_gb(ivf)} > budget {_gb(budget)}; "
                             f"PQ{m} codes{' + ' + suffix[1:] if suffix else ''} need {_gb(need)}")
    smallest = estimate_memory("opq_ivf_pq", count, dim, nlist)
    raise IndexBudgetError(f"{count} vectors of dimension {dim} need at least {_gb(smallest)} "
                           f"(OPQ+IVF-PQ{m}); the memory budget is {_gb(budget)}")


def _gb(n: float) -> str:
    return "unlimited" if n == math.inf else f"{n / 2**30:.2f} GiB"


def held_out_queries(vectors: np.ndarray, n: int = 500, seed: int = 1338) -> np.ndarray:
    """A seeded sample of the indexed vectors: the queries "more like this" asks in production."""
    rng = np.random.default_rng(seed)
    n = min(n, len(vectors))
    return np.ascontiguousarray(vectors[np.sort(rng.choice(len(vectors), n, replace=False))], dtype=np.float32)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the exact top-k that the index returned in its top-k."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)]))


def measure_recall(index: VectorIndex, queries: np.ndarray, truth: np.ndarray, nprobe: int | None = None) -> float:
    _, ids = index.search(queries, truth.shape[1], nprobe=nprobe, complete=False)
    return recall_at_k(ids, truth)


def tune_nprobe(index: VectorIndex, queries: np.ndarray, truth: np.ndarray, *, start: int,
                target: float = TARGET_RECALL) -> tuple[int, float]:
    """The smallest nprobe (doubling from ``start``, then bisecting) whose recall@k reaches ``target``.

    If even searching every list falls short (PQ without enough refinement), returns nlist and its recall.
    """
    ivf = ivf_layer(index.index)
    if ivf is None:
        return 1, measure_recall(index, queries, truth)
    nlist = int(ivf.nlist)
    low, nprobe = 0, max(1, min(start, nlist))
    recall = measure_recall(index, queries, truth, nprobe)
    while recall < target and nprobe < nlist:
        low, nprobe = nprobe, min(nlist, nprobe * 2)
        recall = measure_recall(index, queries, truth, nprobe)
    if recall < target:
        log.warning("recall@%d reaches only %.3f with every list probed (nprobe=%d)", truth.shape[1], recall, nlist)
        return nprobe, recall
    high, high_recall = nprobe, recall
    while high - low > max(1, high // 8):  # bisect to within ~12% of the smallest sufficient nprobe
        mid = (low + high) // 2
        mid_recall = measure_recall(index, queries, truth, mid)
        if mid_recall >= target:
            high, high_recall = mid, mid_recall
        else:
            low = mid
    return high, high_recall


def build_tuned(vectors: np.ndarray, plan: IndexChoice, *, target: float = TARGET_RECALL, queries: int = 500,
                train_sample: int = 256 * 1024, seed: int = 0) -> tuple[VectorIndex, IndexReport]:
    """Build ``plan``'s index, measure recall@10 against exact search and tune nprobe to ``target``.

    The returned index carries the tuned nprobe in its spec (what the manifest records and serving uses).
    """
    start = time.perf_counter()
    index = VectorIndex.build(vectors, plan.spec, train_sample=train_sample, seed=seed)
    build_seconds = time.perf_counter() - start
    start = time.perf_counter()
    recall: float | None = None
    nprobe = plan.spec.nprobe
    if plan.kind != "flat":
        sample = held_out_queries(vectors, queries, seed=seed + 1338)
        truth = exact_top_k(vectors, sample, RECALL_K)[1]
        nprobe, recall = tune_nprobe(index, sample, truth, start=1, target=target)
        index = VectorIndex(index.index, IndexSpec(plan.spec.factory, nprobe))
    else:
        recall = 1.0
    tune_seconds = time.perf_counter() - start
    train = 0 if plan.kind == "flat" else min(len(vectors), train_sample)
    report = IndexReport(plan.spec.factory, plan.kind, nprobe, None if recall is None else round(recall, 4),
                         plan.memory_bytes, round(build_seconds, 3), round(tune_seconds, 3), train,
                         0 if plan.kind == "flat" else min(queries, len(vectors)))
    log.info("index %s: recall@10 %.3f at nprobe %d (%.1fs build, %.1fs tuning)", report.factory,
             report.recall_at_10 or 0, nprobe, build_seconds, tune_seconds)
    return index, report
