"""Which FAISS index for how many vectors, what latency and how much memory, and a build that measures it.

Every index threshold is defined here, once, in ``IndexTargets`` (recall@10 >= 0.95 against exact search,
single-query search <= 5 ms on one core, an optional memory budget) and the measured scan costs below:
- exact ``Flat`` while a full scan of the vectors meets the latency target (its cost is measured per
  vector-dimension on this kind of CPU, ``SCAN_NS``);
- beyond, ``IVF{nlist},PQ{m}x4fs,Refine(Flat)``: 4-bit fast-scan PQ codes over inverted lists (nlist ~
  4*sqrt(N), an HNSW coarse quantizer once nlist is large), re-ranked exactly by the flat vectors. The refine
  step's flat vectors are the store's flat codes (one copy serves refinement and exact scoring);
- the flat codes are ``IndexTargets.code`` (default 8-bit scalar codes: on the demo they keep Recall@1 of
  the compact vectors, README "Compact vectors"); a memory budget that does not hold them takes smaller ones.

After building, recall@10 against exact search is measured on held-out queries (a seeded sample of the
vectors, each query's own vector left out of both answers) and nprobe is raised until recall@10 reaches the
target where the index can; then again under random filters allowing 10% and 1% of the vectors (against the
exact filtered top-10), so the store knows how far to probe under a filter (``IndexSpec.nprobe_for``) instead
of guessing: on clustered vectors a filter's nearest allowed vectors can lie in many more lists.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import faiss
import numpy as np

from indexer.exact import exact_top_k
from indexer.vector_index import IndexSpec, VectorIndex, ivf_layer
from indexer.vector_store import IdFilter

log = logging.getLogger(__name__)

HNSW_QUANTIZER_NLIST = 16_384   # from this many lists the coarse quantizer is an HNSW graph, not a flat scan
TARGET_RECALL = 0.95
TARGET_LATENCY_MS = 5.0
RECALL_K = 10
FILTER_SELECTIVITIES = (0.1, 0.01)  # random filters the nprobe is also tuned under (sets of >= 100 vectors)
FILTER_QUERIES = 200
FILTER_MARGIN = 0.01  # tuned on 200 queries to the target + this, so fresh queries do not land under the target
REFINE_K_FACTORS = (4, 8, 16, 32)  # re-ranking depths tried (x k) until the target recall is reachable
FASTSCAN_LISTS_PER_SQRT = 1
TRAIN_POINTS_PER_LIST = 64  # k-means sample per list (FAISS wants at least 39; more buys little)
MIN_POINTS_PER_LIST = 39        # FAISS k-means warns below this many training points per centroid
# CPU ns to scan one vector-dimension of flat codes with one thread, measured (thread CPU time, 2-core shared
# machine, faiss 1.15): float32 0.39, fp16 0.19, 8-bit 0.19-0.25. Scans are memory-bound: bytes decide.
SCAN_NS = {"float32": 0.39, "fp16": 0.2, "sq8": 0.2}
CODE_BYTES = {"float32": 4, "fp16": 2, "sq8": 1}
FLAT_FACTORY = {"float32": "Flat", "fp16": "SQfp16", "sq8": "SQ8"}  # factory of each code: alone, or as Refine(...)
DEFAULT_CODE = "sq8"  # the flat codes by default (bench/demo_quality.py --compact: R@1 as float32 at 1/4 the bytes)


@dataclass(frozen=True)
class IndexTargets:
    """What an index must achieve: the one definition of every index threshold."""

    recall: float = TARGET_RECALL
    latency_ms: float = TARGET_LATENCY_MS      # single query, one core
    memory_budget_bytes: int | None = None
    flat_threshold: int | None = None          # exact Flat up to this many vectors (None: while it meets latency)
    code: str = DEFAULT_CODE                   # the flat codes (float32 | fp16 | sq8); a budget may take smaller

    def __post_init__(self) -> None:
        if self.code not in CODE_BYTES:
            raise ValueError(f"unknown vector code {self.code!r} (one of {', '.join(CODE_BYTES)})")

    def flat_fits(self, count: int, dim: int, code: str = "float32") -> bool:
        """Whether exact search over ``count`` vectors meets the targets (latency, or the explicit threshold)."""
        if self.flat_threshold is not None:
            return count <= self.flat_threshold
        return flat_latency_ms(count, dim, code) <= self.latency_ms


def flat_latency_ms(count: int, dim: int, code: str = "float32") -> float:
    """Estimated single-query milliseconds of an exact scan over ``count`` vectors, one core."""
    return count * dim * SCAN_NS[code] / 1e6


class IndexBudgetError(ValueError):
    """No index kind fits the memory budget for this many vectors."""


@dataclass(frozen=True)
class IndexChoice:
    """The chosen index, why, and what it should cost in memory."""

    spec: IndexSpec
    kind: str             # flat | ivf_pq_refine | ivf_flat (forced only)
    memory_bytes: int
    reason: str
    code: str = "float32"  # the flat codes: float32 | fp16 | sq8
    train_size: int = 256 * 1024  # vectors the IVF k-means trains on


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


def nlist_for(count: int, per_sqrt: float = 4) -> int:
    """About ``per_sqrt``*sqrt(N) inverted lists (a power of two), never more than the data can train.

    4*sqrt(N) suits float lists; fast-scan PQ lists are cheap to scan, so they take fewer, longer lists
    (``FASTSCAN_LISTS_PER_SQRT``): k-means training costs nlist x sample, minutes on 2 cores at 1M otherwise."""
    nlist = 2 ** round(math.log2(max(per_sqrt * math.sqrt(count), 1)))
    trainable = 2 ** int(math.log2(max(count // MIN_POINTS_PER_LIST, 1)))
    return int(min(nlist, 65_536, trainable))


def pq_size(dim: int) -> int:
    """Sub-quantizers of the 4-bit fast-scan PQ: dim/2 (so 4 bits code 2 dimensions), at most 128, even, and a
    divisor of dim."""
    m = min(128, max(2, dim // 2))
    while dim % m or m % 2:
        m -= 1
    return max(m, 1)


def _ivf_prefix(nlist: int) -> str:
    return f"IVF{nlist}_HNSW32" if nlist >= HNSW_QUANTIZER_NLIST else f"IVF{nlist}"


def estimate_memory(kind: str, count: int, dim: int, nlist: int = 0, code: str = "float32") -> int:
    """Resident bytes of a store of ``kind`` holding ``count`` vectors: flat codes plus the index's codes, ids,
    centroids and graphs."""
    flat = CODE_BYTES[code] * dim * count
    if kind == "flat":
        return flat
    centroids = nlist * dim * 4 + (nlist * 32 * 2 * 4 if nlist >= HNSW_QUANTIZER_NLIST else 0)
    ids = 8 * count
    if kind == "ivf_flat":
        return flat + count * 4 * dim + ids + centroids
    if kind == "ivf_pq_refine":
        return flat + (pq_size(dim) + 1) // 2 * count + ids + centroids + 16 * dim * 4
    raise ValueError(f"unknown index kind {kind!r}")


KINDS = ("flat", "ivf_pq_refine", "ivf_flat")


def choose_index(count: int, dim: int, *, targets: IndexTargets = IndexTargets(),
                 force: str | None = None) -> IndexChoice:
    """The cheapest store for ``count`` vectors of ``dim`` that meets ``targets`` (see the module docstring).

    ``force`` picks a kind regardless of latency (still within the budget): flat, ivf_pq_refine or ivf_flat.
    """
    if force is not None and force not in KINDS:
        raise ValueError(f"unknown index kind {force!r} (one of {', '.join(KINDS)})")
    budget = targets.memory_budget_bytes if targets.memory_budget_bytes is not None else math.inf
    nlist = nlist_for(count, 4 if force == "ivf_flat" else FASTSCAN_LISTS_PER_SQRT)
    prefix = _ivf_prefix(nlist)
    nprobe = max(1, min(nlist, max(8, nlist // 32)))  # a starting point; the build tunes it
    train = min(count, TRAIN_POINTS_PER_LIST * nlist)
    codes = list(CODE_BYTES)
    for code in codes[codes.index(targets.code):]:  # the targets' code first; smaller ones when the budget asks
        flat = estimate_memory("flat", count, dim, code=code)
        if (force == "flat" or (force is None and targets.flat_fits(count, dim, code))) and flat <= budget:
            return IndexChoice(IndexSpec(FLAT_FACTORY[code]), "flat", flat, f"exact scan of {count} {code} vectors: "
                             f"~{flat_latency_ms(count, dim, code):.1f} ms, {_gb(flat)}", code)
        if force == "flat":
            continue
        kind = force or "ivf_pq_refine"
        need = estimate_memory(kind, count, dim, nlist, code)
        if need > budget:
            continue
        if kind == "ivf_flat":
            return IndexChoice(IndexSpec(f"{prefix},Flat", nprobe), kind, need, "forced IVF-Flat", code, train)
        m = pq_size(dim)
        return IndexChoice(IndexSpec(f"{prefix},PQ{m}x4fs,Refine({FLAT_FACTORY[code]})", nprobe), kind, need,
                         f"exact scan of {count} vectors would take ~{flat_latency_ms(count, dim, code):.0f} ms > "
                         f"{targets.latency_ms:g} ms: IVF{nlist} + PQ{m}x4fs codes re-ranked by {code} vectors, "
                         f"{_gb(need)} within {_gb(budget)}", code, train)
    smallest = estimate_memory("flat", count, dim, code="sq8")
    raise IndexBudgetError(f"{count} vectors of dimension {dim} need at least {_gb(smallest)} (8-bit codes); "
                           f"the memory budget is {_gb(budget)}")


def _gb(n: float) -> str:
    return "unlimited" if n == math.inf else f"{n / 2**30:.2f} GiB"


def refine_layer(index: faiss.Index) -> faiss.IndexRefine | None:
    """The refine wrapper of ``index`` (whose k_factor sets how many candidates are re-ranked), or None."""
    index = faiss.downcast_index(index)
    return index if isinstance(index, faiss.IndexRefine) else None


def held_out_queries(vectors: np.ndarray, n: int = 500, seed: int = 1338) -> np.ndarray:
    """A seeded sample of the indexed vectors: the queries "more like this" asks in production."""
    rng = np.random.default_rng(seed)
    n = min(n, len(vectors))
    return np.ascontiguousarray(vectors[np.sort(rng.choice(len(vectors), n, replace=False))], dtype=np.float32)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the exact top-k that the index returned in its top-k."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)]))


def without_own(ids: np.ndarray, own: np.ndarray | None, k: int) -> np.ndarray:
    """The first k ids of each row other than the row's own id (a query sampled from the indexed vectors would
    otherwise find itself first, and recall would count that easy hit)."""
    if own is None:
        return ids[:, :k]
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for row, (found, mine) in enumerate(zip(ids, own, strict=True)):
        kept = found[found != mine][:k]
        out[row, :len(kept)] = kept
    return out


def measure_recall(index: VectorIndex, queries: np.ndarray, truth: np.ndarray, nprobe: int | None = None,
                   own: np.ndarray | None = None, allowed: IdFilter | None = None) -> float:
    """Recall@k of ``index`` at ``nprobe`` (``own``: each query's own id, left out of the answer; ``allowed``:
    a filter, ``truth`` being the exact top-k among it)."""
    k = truth.shape[1]
    _, ids = index.search(queries, k + (own is not None), allowed_ids=allowed, nprobe=nprobe, complete=False)
    return recall_at_k(without_own(ids, own, k), truth)


def tune_nprobe(index: VectorIndex, queries: np.ndarray, truth: np.ndarray, *, start: int,
                target: float = TARGET_RECALL, own: np.ndarray | None = None,
                allowed: IdFilter | None = None) -> tuple[int, float]:
    """The smallest nprobe (doubling from ``start``, then bisecting) whose recall@k reaches ``target``.

    If even searching every list falls short (PQ without enough refinement), returns nlist and its recall.
    """
    ivf = ivf_layer(index.index)
    if ivf is None:
        return 1, measure_recall(index, queries, truth, own=own, allowed=allowed)
    nlist = int(ivf.nlist)
    low, nprobe = 0, max(1, min(start, nlist))
    recall = measure_recall(index, queries, truth, nprobe, own, allowed)
    while recall < target and nprobe < nlist:
        low, nprobe = nprobe, min(nlist, nprobe * 2)
        recall = measure_recall(index, queries, truth, nprobe, own, allowed)
    if recall < target:
        log.warning("recall@%d reaches only %.3f with every list probed (nprobe=%d)", truth.shape[1], recall, nlist)
        return nprobe, recall
    high, high_recall = nprobe, recall
    while high - low > max(1, high // 8):  # bisect to within ~12% of the smallest sufficient nprobe
        mid = (low + high) // 2
        mid_recall = measure_recall(index, queries, truth, mid, own, allowed)
        if mid_recall >= target:
            high, high_recall = mid, mid_recall
        else:
            low = mid
    return high, high_recall


def tune_filtered(index: VectorIndex, vectors: np.ndarray, queries: np.ndarray, own: np.ndarray, nprobe: int,
                  target: float, seed: int) -> tuple[tuple[float, int], ...]:
    """(selectivity, nprobe) pairs: the smallest nprobe reaching ``target`` (+ a margin) recall@10 against the exact filtered
    top-10 under a random filter allowing each of ``FILTER_SELECTIVITIES`` of the vectors (the queries' own
    vectors left out of it). Stops at the first selectivity whose filter holds under 100 vectors."""
    rng = np.random.default_rng(seed + 7)
    out: list[tuple[float, int]] = []
    start = nprobe
    for share in FILTER_SELECTIVITIES:
        count = round(share * len(vectors))
        if count < 10 * RECALL_K:
            break
        allowed = np.setdiff1d(np.sort(rng.choice(len(vectors), count, replace=False)), own)
        base = np.asarray(vectors[allowed], dtype=np.float32)
        truth = exact_top_k(base, queries, RECALL_K, allowed)[1]
        start, _ = tune_nprobe(index, queries, truth, start=start, target=min(1.0, target + FILTER_MARGIN),
                               allowed=IdFilter.from_ids(allowed))
        out.append((share, int(start)))
    return tuple(out)


def build_tuned(vectors: np.ndarray, plan: IndexChoice, *, target: float = TARGET_RECALL, queries: int = 500,
                train_sample: int = 256 * 1024, seed: int = 0) -> tuple[VectorIndex, IndexReport]:
    """Build ``plan``'s index, measure recall@10 against exact search and tune nprobe to ``target``.

    The returned index carries the tuned nprobe in its spec (what the manifest records and serving uses).
    """
    start = time.perf_counter()
    train_sample = min(train_sample, plan.train_size)
    index = VectorIndex.build(vectors, plan.spec, train_sample=train_sample, seed=seed)
    build_seconds = time.perf_counter() - start
    start = time.perf_counter()
    recall: float | None = None
    nprobe = plan.spec.nprobe
    if plan.kind != "flat":
        own = np.sort(np.random.default_rng(seed + 1338).choice(len(vectors), min(queries, len(vectors)),
                                                                 replace=False))
        sample = np.ascontiguousarray(vectors[own], dtype=np.float32)
        truth = without_own(exact_top_k(vectors, sample, RECALL_K + 1)[1], own, RECALL_K)
        refine = refine_layer(index.index)
        for k_factor in REFINE_K_FACTORS if refine is not None else (None,):
            if refine is not None:
                refine.k_factor = float(k_factor)  # a build-time setting, saved with the index
            nprobe, recall = tune_nprobe(index, sample, truth, start=1, target=target, own=own)
            if recall >= target:
                break
        filtered = tune_filtered(index, vectors, sample[:FILTER_QUERIES], own[:FILTER_QUERIES], nprobe, target, seed)
        log.info("index %s: nprobe %d unfiltered, %s under filters", plan.spec.factory, nprobe,
                 ", ".join(f"{p} at {s:.0%}" for s, p in filtered) or "none measured")
        index = VectorIndex(index.index, IndexSpec(plan.spec.factory, nprobe, filtered))
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
