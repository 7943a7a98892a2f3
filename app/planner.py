"""The search planner: turn a query vector and constraints into ranked, grouped results.

- No constraint: ANN search over the whole catalog, over-fetching until enough products are found.
- A candidate set (keyword hits, the shop's candidate ids, categories, all intersected) of up to
  ``exact_threshold`` ids: gather their stored vectors and score them exactly, so the answer is complete.
- A larger candidate set: ANN search restricted to it (an id selector, or over-fetch and filter where the
  index cannot take a selector), with the same over-fetch loop until k products are found or the set is
  exhausted.
With a keyword and ``keyword_weight`` > 0, candidates are ranked by a blend of visual similarity and BM25.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from indexer import StoredItem
from indexer.live import LiveCatalog


class PlanError(ValueError):
    """A query the planner cannot answer as asked (never answered silently in another way)."""


@dataclass(frozen=True)
class Query:
    """Constraints of one search, already validated at the boundary."""

    k: int
    offset: int = 0
    q: str | None = None
    candidate_ids: Sequence[str] | None = None
    categories: Sequence[str] | None = None
    group: bool = True
    keyword_weight: float = 0.0
    exclude_ids: frozenset[int] = frozenset()
    exclude_products: frozenset[str] = frozenset()


@dataclass
class Ranked:
    """Planner output: hits with their catalog rows, and how they were found."""

    hits: list[tuple[StoredItem, float]]
    plan: str
    candidates: int | None = None
    unknown_candidate_ids: list[str] = field(default_factory=list)
    has_more: bool = False


@dataclass
class Candidates:
    allowed: np.ndarray | None  # None: no constraint
    unknown: list[str]
    keyword_scores: dict[int, float] | None


def candidate_set(catalog: LiveCatalog, query: Query) -> Candidates:
    """The live ids every constraint allows, candidate ids the catalog does not know, and BM25 scores."""
    sets: list[np.ndarray] = []
    unknown: list[str] = []
    keyword_scores = None
    if query.candidate_ids is not None:
        known = catalog.ids_for_item_ids(list(dict.fromkeys(query.candidate_ids)))
        unknown = [c for c in query.candidate_ids if c not in known]
        sets.append(np.fromiter(known.values(), dtype=np.int64, count=len(known)))
    if query.q:
        hits = catalog.keyword_ids(query.q)
        keyword_scores = dict(hits)
        sets.append(np.fromiter(keyword_scores, dtype=np.int64, count=len(keyword_scores)))
    if query.categories:
        sets.append(catalog.ids_in_categories(list(query.categories)))
    if not sets:
        return Candidates(None, unknown, None)
    allowed = np.unique(sets[0])
    for other in sets[1:]:
        allowed = np.intersect1d(allowed, other)
    if query.exclude_ids:
        allowed = np.setdiff1d(allowed, np.fromiter(query.exclude_ids, dtype=np.int64))
    return Candidates(allowed, unknown, keyword_scores)


def _take(catalog: LiveCatalog, ids: np.ndarray, scores: np.ndarray, query: Query, limit: int,
          first_chunk: int = 256) -> list[tuple[StoredItem, float]]:
    """Walk ranked ids, dropping excluded ones and (when grouping) all but a product's best image.

    Rows are fetched in growing chunks, so a long ranked list costs about as much as the part actually used.
    """
    ids = np.asarray(ids)
    valid = ids >= 0
    ids, scores = ids[valid], np.asarray(scores)[valid]
    out: list[tuple[StoredItem, float]] = []
    seen: set[str] = set()
    start, step = 0, max(first_chunk, 2 * limit)
    while start < len(ids) and len(out) < limit:
        part = [int(i) for i in ids[start:start + step]]
        rows = catalog.by_ids(part)
        for i, score in zip(part, scores[start:start + step], strict=True):
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
        start, step = start + step, step * 4
    return out


def _fused(visual: np.ndarray, ids: np.ndarray, keyword_scores: dict[int, float], weight: float) -> np.ndarray:
    """(1 - w) * cosine + w * BM25 scaled to [0, 1] by the best keyword hit."""
    bm25 = np.array([keyword_scores.get(int(i), 0.0) for i in ids], dtype=np.float32)
    top = float(bm25.max()) if len(bm25) else 0.0
    return (1.0 - weight) * visual + weight * (bm25 / top if top > 0 else bm25)


def plan_and_search(catalog: LiveCatalog, vector: np.ndarray, query: Query, *, exact_threshold: int,
                    overfetch: int) -> Ranked:
    """Rank catalog images for ``vector`` under ``query``'s constraints (see the module docstring)."""
    found = candidate_set(catalog, query)
    allowed = found.allowed
    wanted = query.offset + query.k
    if allowed is not None and len(allowed) <= exact_threshold:
        visual = catalog.scores_for(allowed, vector)
        if found.keyword_scores is not None and query.keyword_weight > 0:
            visual = _fused(visual, allowed, found.keyword_scores, query.keyword_weight)
        order = np.lexsort((allowed, -visual))
        hits = _take(catalog, allowed[order], visual[order], query, wanted + 1)
        return Ranked(hits[query.offset:wanted], "exact", len(allowed), found.unknown, len(hits) > wanted)

    if query.keyword_weight > 0:
        raise PlanError(f"keyword_weight needs a keyword set of at most {exact_threshold} images to score exactly")
    plan = "index" if allowed is None else "index+selector"
    limit = catalog.count if allowed is None else len(allowed)
    fetch = min(limit, (wanted + 1) * (overfetch if query.group else 1) + len(query.exclude_ids))
    while True:
        scores, ids = catalog.search(vector, max(fetch, 1), allowed_ids=allowed)
        hits = _take(catalog, ids, scores, query, wanted + 1)
        # Done with enough hits, or when the search returned fewer than asked (nothing more to find),
        # or when it was asked for every allowed image already.
        if len(hits) > wanted or len(ids) < fetch or fetch >= limit:
            return Ranked(hits[query.offset:wanted], plan, None if allowed is None else len(allowed), found.unknown,
                          len(hits) > wanted)
        fetch = min(limit, fetch * 4)
