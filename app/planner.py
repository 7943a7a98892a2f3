"""The search planner: turn a query vector and constraints into ranked, grouped results.

Rows come from the ``LiveCatalog``, vectors from the generation's ``VectorStore`` (the only vector interface
the planner uses, so any backend behind it answers the same way).

- No constraint: ANN search over the whole catalog, over-fetching until enough products are found.
- A candidate set (keyword hits, the shop's candidate ids, categories, all intersected as masks over the id
  space) of up to ``exact_threshold`` ids that the store estimates cheaper to score exactly than to search
  (``VectorStore.prefers_exact``: for FAISS, against the lists an IVF search would scan at that selectivity):
  exact scores over the store's compact in-RAM vectors, so the answer is complete.
- Otherwise ANN search restricted to the set (the store applies the filter natively, probing more lists the
  more selective it is, or over-fetches and filters), with the same over-fetch loop until k products are found
  or the set is exhausted.
With a keyword and ``keyword_weight`` > 0, candidates are ranked by a blend of visual similarity and BM25.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from indexer import StoredItem
from indexer.item_ids import JoinedIds
from indexer.live import LiveCatalog
from indexer.overfetch import growing
from indexer.vector_store import IdFilter, SearchParams, VectorStore


class PlanError(ValueError):
    """A query the planner cannot answer as asked (never answered silently in another way)."""


@dataclass(frozen=True)
class Query:
    """Constraints of one search, already validated at the boundary."""

    k: int
    offset: int = 0
    q: str | None = None
    candidate_ids: Sequence[str] | JoinedIds | None = None  # JoinedIds: one comma-separated text, not split
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
    allowed: IdFilter | None  # None: no constraint
    unknown: list[str]
    keyword_scores: dict[int, float] | None  # BM25 per id, only when the ranking blends it in


def candidate_set(catalog: LiveCatalog, query: Query) -> Candidates:
    """The live ids every constraint allows, candidate ids the catalog does not know, and BM25 scores."""
    space = catalog.id_space
    mask: np.ndarray | None = None
    unknown: list[str] = []
    keyword_scores = None
    if query.candidate_ids is not None:
        given = query.candidate_ids  # a list, tuple or JoinedIds as it is (copying 100k references costs ~3 ms)
        ids, unknown = catalog.resolve_item_ids(given if isinstance(given, (list, tuple, JoinedIds)) else list(given))
        mask = np.zeros(space, dtype=bool)
        mask[ids] = True
    if query.q:
        if query.keyword_weight > 0:
            keyword_scores = dict(catalog.keyword_ids(query.q))
            hits = np.zeros(space, dtype=bool)
            hits[np.fromiter(keyword_scores, dtype=np.int64, count=len(keyword_scores))] = True
        else:
            hits = catalog.keyword_mask(query.q)
        mask = hits if mask is None else mask & hits
    if query.categories:
        inside = catalog.category_mask(list(query.categories))
        mask = inside if mask is None else mask & inside
    if mask is None:
        return Candidates(None, unknown, None)
    if query.exclude_ids:
        excluded = np.fromiter(query.exclude_ids, dtype=np.int64)
        mask[excluded[excluded < len(mask)]] = False
    return Candidates(IdFilter.from_mask(mask), unknown, keyword_scores)


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
    start = 0
    for step in growing(max(first_chunk, 2 * limit), max(len(ids), 1)):
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
                return out
        start += step
        if start >= len(ids):
            break
    return out


def _fused(visual: np.ndarray, ids: np.ndarray, keyword_scores: dict[int, float], weight: float) -> np.ndarray:
    """(1 - w) * cosine + w * BM25 scaled to [0, 1] by the best keyword hit."""
    bm25 = np.array([keyword_scores.get(int(i), 0.0) for i in ids], dtype=np.float32)
    top = float(bm25.max()) if len(bm25) else 0.0
    return (1.0 - weight) * visual + weight * (bm25 / top if top > 0 else bm25)


def plan_and_search(catalog: LiveCatalog, vectors: VectorStore, vector: np.ndarray, query: Query, *,
                    exact_threshold: int, overfetch: int) -> Ranked:
    """Rank catalog images for ``vector`` (in the store's space) under ``query``'s constraints (see the module
    docstring)."""
    found = candidate_set(catalog, query)  # also brings the vector store up to the delta's current version
    allowed = found.allowed
    wanted = query.offset + query.k
    # Exact scoring when the set is small enough to score completely and the store estimates it cheaper.
    exact = allowed is not None and len(allowed) <= exact_threshold and vectors.prefers_exact(len(allowed))
    fusion = found.keyword_scores is not None and query.keyword_weight > 0
    count = None if allowed is None else len(allowed)
    if fusion:
        if allowed is None or len(allowed) > exact_threshold:
            raise PlanError(f"keyword_weight needs a keyword set of at most {exact_threshold} images to score exactly")
        if not count:
            return Ranked([], "exact", count, found.unknown, False)
        scores, ids = vectors.search(vector, count, allowed, SearchParams(exact=True))
        ids, visual = ids[0][ids[0] >= 0], scores[0][ids[0] >= 0]
        fused = _fused(visual, ids, found.keyword_scores, query.keyword_weight)
        order = np.lexsort((ids, -fused))
        hits = _take(catalog, ids[order], fused[order], query, wanted + 1)
        return Ranked(hits[query.offset:wanted], "exact", count, found.unknown, len(hits) > wanted)

    if allowed is not None and not exact and len(allowed) == catalog.id_space:
        allowed = None  # the filter allows every id there is (a category list naming them all): search unfiltered
    plan = "exact" if exact else "index" if allowed is None else "index+selector"
    if count == 0:
        return Ranked([], plan, count, found.unknown, False)
    params = SearchParams(exact=exact)
    limit = vectors.ntotal if allowed is None else count
    first = (wanted + 1) * (overfetch if query.group else 1) + len(query.exclude_ids)
    hits: list[tuple[StoredItem, float]] = []
    for fetch in growing(first, limit):
        scores, ids = vectors.search(vector, fetch, allowed, params)
        hits = _take(catalog, ids[0], scores[0], query, wanted + 1)
        # Done with enough hits, or when the search returned fewer than asked (nothing more to find),
        # or when it was asked for every allowed image already.
        if len(hits) > wanted or int((ids[0] >= 0).sum()) < fetch:
            break
    return Ranked(hits[query.offset:wanted], plan, count, found.unknown, len(hits) > wanted)
