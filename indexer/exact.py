"""Exact nearest neighbours by inner product: the one brute-force routine (ground truth, delta rows, oracles)."""

from __future__ import annotations

import faiss
import numpy as np

from indexer.vector_store import merge_top_k

SCORE_BUDGET = 1 << 25  # floats of scores held at once (128 MiB): bounds memory for many queries x many vectors


def exact_top_k_by_id(vectors: np.ndarray, queries: np.ndarray, k: int,
                      ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among the rows ``ids`` (sorted, None: all) of a float32 C-contiguous ``vectors``, scored in
    place by FAISS (no gathered copy of the rows); same answer as ``exact_top_k(vectors[ids], ...)``."""
    if ids is None:
        return exact_top_k(vectors, queries, k)
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    best = []
    for query in queries:
        scores = np.empty(len(ids), dtype=np.float32)
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(scores), faiss.swig_ptr(query), faiss.swig_ptr(vectors),
                                         faiss.swig_ptr(ids), vectors.shape[1], 1, len(ids))
        best.append(top_k_of(scores[None, :], ids, k))
    return np.concatenate([b[0] for b in best]), np.concatenate([b[1] for b in best])


def top_k_of(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of ``scores`` (columns are ``ids``), best first, ties by the smaller id, -1 padded."""
    take = min(k, len(ids))
    if take < len(ids):
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        part = (np.take_along_axis(scores, top, 1), ids[top])
    else:
        part = (scores, np.broadcast_to(ids, scores.shape))
    return merge_top_k([part], k)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int,
                ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, ids) of each query among ``vectors`` (row i has id ``ids[i]``, default i).

    Best first, ties by the smaller id, -1 padded when fewer than k vectors. ``vectors`` may be a memory map
    or any float dtype (fp16 compact codes): it is read in chunks, converted chunk by chunk.
    """
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    n = len(vectors)
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if len(ids) != n:
        raise ValueError(f"{n} vectors but {len(ids)} ids")
    chunk = max(1024, SCORE_BUDGET // max(len(queries), 1))
    best = (np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64))
    for start in range(0, n, chunk):
        block = np.asarray(vectors[start:start + chunk], dtype=np.float32)
        best = merge_top_k([best, top_k_of(queries @ block.T, ids[start:start + chunk], k)], k)
    if best[1].shape[1] < k:
        best = merge_top_k([best], k)
    return best
