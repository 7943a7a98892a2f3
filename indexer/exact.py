"""Exact nearest neighbours by inner product: the one brute-force routine (ground truth, delta rows, oracles)."""

from __future__ import annotations

import numpy as np

from indexer.vector_store import merge_top_k

SCORE_BUDGET = 1 << 25  # floats of scores held at once (128 MiB): bounds memory for many queries x many vectors


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
        scores = queries @ block.T
        block_ids = ids[start:start + chunk]
        take = min(k, len(block_ids))
        if take < len(block_ids):
            top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
            part = (np.take_along_axis(scores, top, 1), block_ids[top])
        else:
            part = (scores, np.broadcast_to(block_ids, scores.shape))
        best = merge_top_k([best, part], k)
    if best[1].shape[1] < k:
        best = merge_top_k([best], k)
    return best
