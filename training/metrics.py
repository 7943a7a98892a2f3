"""Retrieval metrics from embeddings and labels: Recall@K and MAP@R, with exact nearest neighbours.

Protocol (the usual one for SOP / CUB / Cars, and Musgrave et al., "A Metric Learning Reality Check", 2020):
every sample is a query once, the gallery is all *other* samples, similarity is cosine (inner product of
L2-normalised vectors) and the search is exact (faiss ``IndexFlatIP``).

* Recall@K: the fraction of queries with at least one sample of their own label among the K nearest.
* MAP@R: for a query with R other samples of its label, look at the R nearest neighbours;
  ``MAP@R = 1/R * sum_{i=1..R} P(i) * rel(i)`` where ``P(i)`` is the precision of the first ``i`` neighbours
  and ``rel(i)`` is 1 when the i-th neighbour has the query's label. Averaged over queries.
* R-Precision: the fraction of correct samples among those R neighbours.

Queries whose label has no other sample cannot be answered correctly and are left out (``queries`` in the
result says how many counted).
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

DEFAULT_KS = (1, 5, 10, 100)


def _as_unit_float32(embeddings: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def nearest_neighbours(embeddings: np.ndarray, k: int, exclude_self: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine kNN of every row against all rows: ``(indices (N,k), similarities (N,k))``, best first.

    With ``exclude_self`` the query itself is removed by index (not by position, so exact duplicates of the
    query are still returned as neighbours). ``k`` is capped at the number of candidates.
    """
    x = _as_unit_float32(embeddings)
    n = x.shape[0]
    k = min(int(k), n - 1 if exclude_self else n)
    if k <= 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, idx = index.search(x, k + 1 if exclude_self else k)
    if not exclude_self:
        return idx.astype(np.int64), sims
    keep = idx != np.arange(n)[:, None]
    no_self = keep.all(axis=1)  # self not among the k+1 (many exact ties): drop the last one
    keep[no_self, -1] = False
    return idx[keep].reshape(n, k).astype(np.int64), sims[keep].reshape(n, k)


def retrieval_metrics(embeddings: np.ndarray, labels: Sequence | np.ndarray,
                      ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Recall@K for each K in ``ks``, MAP@R and R-Precision, over all queries that have a positive.

    Returns ``{"recall@1": ..., "recall@5": ..., "map@r": ..., "r_precision": ..., "queries": n,
    "samples": N, "classes": C}``. Metrics are fractions in [0, 1].
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(embeddings):
        raise ValueError(f"need one label per embedding: {len(labels)} labels for {len(embeddings)} embeddings")
    ks = sorted({int(k) for k in ks})
    if any(k < 1 for k in ks):
        raise ValueError("K must be at least 1")
    _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    codes = codes.reshape(-1)
    n = len(codes)
    r = counts[codes] - 1  # other samples of the query's class
    result: dict[str, float] = {f"recall@{k}": 0.0 for k in ks}
    result.update({"map@r": 0.0, "r_precision": 0.0, "queries": 0, "samples": n, "classes": int(len(counts))})
    valid = r > 0
    if n < 2 or not valid.any():
        return result
    depth = int(max(max(ks), r.max()))
    idx, _ = nearest_neighbours(embeddings, depth, exclude_self=True)
    depth = idx.shape[1]
    hits = codes[idx] == codes[:, None]  # (N, depth)
    hits_v, r_v = hits[valid], r[valid]
    for k in ks:
        result[f"recall@{k}"] = float(hits_v[:, :min(k, depth)].any(axis=1).mean())
    per_query_ap, per_query_rp = map_at_r_from_hits(hits_v, r_v)
    result["map@r"] = float(per_query_ap.mean())
    result["r_precision"] = float(per_query_rp.mean())
    result["queries"] = int(valid.sum())
    return result


def map_at_r_from_hits(hits: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-query (MAP@R, R-Precision) from ranked relevance rows ``hits`` (Q, depth >= R) and ``r`` (Q,).

    ``AP@R = 1/R * sum_{i<=R} P(i) * rel(i)``: precision at i counts only where the i-th neighbour is correct,
    and the sum is divided by R (not by the number of correct neighbours found).
    """
    hits = np.asarray(hits, dtype=bool)
    r = np.asarray(r)
    if hits.ndim != 2 or len(r) != len(hits) or (r < 1).any() or (r > hits.shape[1]).any():
        raise ValueError("need hits (Q, depth) and 1 <= r <= depth per query")
    ranks = np.arange(1, hits.shape[1] + 1)
    rel = hits & (ranks[None, :] <= r[:, None])
    precision_at_i = np.cumsum(rel, axis=1) / ranks[None, :]
    return (precision_at_i * rel).sum(axis=1) / r, rel.sum(axis=1) / r


def format_metrics(metrics: dict[str, float], ks: Sequence[int] = DEFAULT_KS) -> str:
    """``R@1 0.812  R@5 ...  MAP@R 0.431`` (percentages) for logs."""
    parts = [f"R@{k} {100 * metrics[f'recall@{k}']:.1f}" for k in ks if f"recall@{k}" in metrics]
    parts.append(f"MAP@R {100 * metrics['map@r']:.1f}")
    return "  ".join(parts)
