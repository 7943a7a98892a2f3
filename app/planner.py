"""The search planner: turn a query vector and constraints into ranked, grouped results.

- No constraint: ANN search over the whole index, over-fetching until k products are found.
- A candidate set (keyword hits, the shop's candidate ids, categories) of up to ``exact_threshold`` ids:
  gather their stored vectors and score them exactly, so the answer is complete and exact.
- A larger candidate set: ANN search restricted by a FAISS id selector, with the same over-fetch loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from app.serving import LoadedGeneration
from indexer import StoredItem, exact_top_k


@dataclass(frozen=True)
class Query:
    """Constraints of one search, already validated at the boundary."""

    k: int
    q: str | None = None
    candidate_ids: Sequence[str] | None = None
    categories: Sequence[str] | None = None
    group: bool = True
    exclude_ids: frozenset[int] = frozenset()
    exclude_products: frozenset[str] = frozenset()


@dataclass
class Ranked:
    """Planner output: hits with their catalog rows, and how they were found."""

    hits: list[tuple[StoredItem, float]]
    plan: str
    candidates: int | None = None
    unknown_candidate_ids: list[str] = field(default_factory=list)


def candidate_set(gen: LoadedGeneration, query: Query, keyword_limit: int) -> tuple[np.ndarray | None, list[str]]:
    """The ids every constraint allows (None: no constraint), and candidate ids the catalog does not know."""
    sets: list[np.ndarray] = []
    unknown: list[str] = []
    if query.candidate_ids is not None:
        known = gen.store.ids_for_item_ids(list(dict.fromkeys(query.candidate_ids)))
        unknown = [c for c in query.candidate_ids if c not in known]
        sets.append(np.fromiter(known.values(), dtype=np.int64, count=len(known)))
    if query.q:
        sets.append(np.array([i for i, _ in gen.store.keyword_ids(query.q, keyword_limit)], dtype=np.int64))
    if query.categories:
        sets.append(np.array(gen.store.ids_in_categories(list(query.categories)), dtype=np.int64))
    if not sets:
        return None, unknown
    allowed = np.unique(sets[0])
    for other in sets[1:]:
        allowed = np.intersect1d(allowed, other, assume_unique=False)
    if query.exclude_ids:
        allowed = np.setdiff1d(allowed, np.fromiter(query.exclude_ids, dtype=np.int64))
    return allowed, unknown


def _take(gen: LoadedGeneration, ids: np.ndarray, scores: np.ndarray, query: Query, limit: int) -> list[tuple[StoredItem, float]]:
    """Walk ranked ids, dropping excluded ones and (when grouping) all but a product's best image."""
    ids_list = [int(i) for i in ids if i >= 0]
    rows = gen.store.by_ids(ids_list)
    out: list[tuple[StoredItem, float]] = []
    seen: set[str] = set()
    for i, score in zip(ids_list, scores[: len(ids_list)], strict=True):
        item = rows.get(i)
        if item is None or i in query.exclude_ids or item.product_id in query.exclude_products:
            continue
        if query.group:
            if item.product_id in seen:
                continue
            seen.add(item.product_id)
        out.append((item, float(score)))
        if len(out) == limit:
            break
    return out


def plan_and_search(gen: LoadedGeneration, vector: np.ndarray, query: Query, *, exact_threshold: int,
                    overfetch: int, keyword_limit: int) -> Ranked:
    """Rank catalog images for ``vector`` under ``query``'s constraints (see the module docstring)."""
    allowed, unknown = candidate_set(gen, query, keyword_limit)
    if allowed is not None and len(allowed) <= exact_threshold:
        vectors = gen.vectors[allowed] if len(allowed) else np.zeros((0, gen.manifest.dim), np.float32)
        scores, ids = exact_top_k(vectors, allowed, vector, len(allowed))
        return Ranked(_take(gen, ids, scores, query, query.k), "exact", len(allowed), unknown)

    plan = "index" if allowed is None else "index+selector"
    limit = gen.index.ntotal if allowed is None else len(allowed)
    fetch = min(limit, query.k * (overfetch if query.group else 1) + len(query.exclude_ids))
    while True:
        scores, ids = gen.index.search(vector, max(fetch, 1), allowed_ids=allowed)
        hits = _take(gen, ids[0], scores[0], query, query.k)
        returned = int((ids[0] >= 0).sum())
        # Stop when we have k, or the index gave fewer than asked (nothing more to find), or we asked for all.
        if len(hits) >= query.k or returned < fetch or fetch >= limit:
            return Ranked(hits, plan, None if allowed is None else len(allowed), unknown)
        fetch = min(limit, fetch * 4)
