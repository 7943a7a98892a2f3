"""Each planner branch against an exact brute-force oracle on seeded synthetic vectors, on every VectorStore
backend (tests/vector_backends.py), with exact Flat and with IVF at its tuned nprobe, after deletes and with a
non-empty delta."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from app.planner import PlanError, Query, plan_and_search
from indexer import CatalogRow, CatalogStore, IndexSpec, VectorStore
from indexer.item_ids import JoinedIds
from indexer.live import LiveCatalog, vector_sync
from indexer.catalog_store import create_store
from tests.vector_backends import BACKENDS

N, D, PER_PRODUCT = 3000, 24, 3
WORDS = ["oak", "pine", "steel", "glass", "velvet"]
FLAT, IVF = IndexSpec("Flat"), IndexSpec("IVF16,Flat")


@dataclass
class World:
    """A served generation (rows + vector store) and what the oracle knows it holds."""

    catalog: LiveCatalog
    store: VectorStore
    live: dict[int, tuple[CatalogRow, np.ndarray]]  # vector id -> (row, vector)
    exact_index: bool

    def vector(self, i: int) -> np.ndarray:
        return self.live[i][1]


def _rows(n: int, offset: int = 0) -> list[CatalogRow]:
    return [CatalogRow(item_id=f"i{i}", product_id=f"p{i // PER_PRODUCT}", image=Path(f"/x/{i}.jpg"),
                       title=f"{WORDS[i % 5]} chair {i}", category=["a", "b", "c"][i % 3]) for i in range(offset, n)]


def make_world(tmp: Path, make, spec: IndexSpec, changes: bool) -> World:
    rng = np.random.default_rng(1338)
    centres = rng.standard_normal((100, D)).astype(np.float32)
    vectors = centres[rng.integers(0, 100, N + 60)] + 0.5 * rng.standard_normal((N + 60, D)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = _rows(N)
    create_store(tmp / "catalog.db", rows, [str(i) for i in range(N)])
    store = make(vectors[:N], spec, tmp)
    catalog = LiveCatalog(tmp, CatalogStore(tmp / "catalog.db"), N, D)
    catalog.follow(vector_sync(store, lambda v: v))
    live = {i: (rows[i], vectors[i]) for i in range(N)}
    if changes:
        for i in range(0, N, 17):  # delete every 17th image
            assert catalog.delta.delete(rows[i].item_id, catalog.base_id_of(rows[i].item_id))
            del live[i]
        for n, row in enumerate(_rows(N + 60, N) + _rows(60, 40)):  # 60 new images, 20 replaced ones
            vector = vectors[N + n % 60]
            new_id = catalog.delta.upsert(row, "h", vector, catalog.base_id_of(row.item_id)).id
            live = {k: v for k, v in live.items() if v[0].item_id != row.item_id}
            live[new_id] = (row, vector)
        catalog.snapshot()
    return World(catalog, store, live, spec.factory == "Flat")


def oracle(world: World, query_vec: np.ndarray, allowed, k: int, group: bool = True) -> list[str]:
    """Brute force: score every allowed live image, keep each product's best, take k."""
    ids = [i for i in world.live if allowed is None or i in allowed]
    scores = {i: float(world.vector(i) @ query_vec) for i in ids}
    out, seen = [], set()
    for i in sorted(ids, key=lambda i: (-scores[i], i)):
        row = world.live[i][0]
        if group and row.product_id in seen:
            continue
        seen.add(row.product_id)
        out.append(row.item_id)
    return out[:k]


def allowed_ids(world: World, keep) -> set[int]:
    return {i for i, (row, _) in world.live.items() if keep(row)}


@pytest.fixture(scope="module", params=[pytest.param((FLAT, False), id="flat"),
                                        pytest.param((FLAT, True), id="flat-changed"),
                                        pytest.param((IVF, True), id="ivf-tuned-changed")])
def world(request, tmp_path_factory, make) -> World:
    spec, changes = request.param
    return make_world(tmp_path_factory.mktemp("world"), make, spec, changes)


@pytest.fixture(scope="module", params=BACKENDS)
def make(request):
    return request.param


def _run(world: World, vec, query, exact_threshold):
    return plan_and_search(world.catalog, world.store, vec, query, exact_threshold=exact_threshold, overfetch=2)


def _check(world: World, ranked, expected: list[str], exact_plan: bool) -> None:
    got = [h.item_id for h, _ in ranked.hits]
    if exact_plan or world.exact_index:
        assert got == expected
    else:  # ANN at its tuned nprobe: high recall, never a wrong or deleted image, k results
        assert len(got) == len(expected) and len(set(got) & set(expected)) >= 0.5 * len(expected)
    live_items = {row.item_id for row, _ in world.live.values()}
    assert set(got) <= live_items


def _query(world: World, n: int) -> np.ndarray:
    ids = sorted(world.live)
    vec = world.vector(ids[n]) * 0.6 + world.vector(ids[n + 1]) * 0.4
    return vec / np.linalg.norm(vec)


@pytest.mark.parametrize("threshold, plan", [(100_000, "exact"), (0, "index+selector")])
def test_keyword_and_category_branches_match_brute_force(world, threshold, plan):
    vec = _query(world, 7)
    allowed = allowed_ids(world, lambda r: "oak" in r.title and r.category == "b")
    for group in (True, False):
        ranked = _run(world, vec, Query(k=10, q="oak", categories=["b"], group=group), threshold)
        assert ranked.plan == plan and ranked.candidates == len(allowed)
        _check(world, ranked, oracle(world, vec, allowed, 10, group), plan == "exact")


def test_unconstrained_branch_matches_brute_force_with_grouping(world):
    recalls = []
    for n in range(0, 200, 20):
        vec = _query(world, n)
        ranked = _run(world, vec, Query(k=20), 100_000)
        assert ranked.plan == "index"
        expected = oracle(world, vec, None, 20)
        _check(world, ranked, expected, False)
        recalls.append(len({h.item_id for h, _ in ranked.hits} & set(expected)) / 20)
    assert np.mean(recalls) >= (1.0 if world.exact_index else 0.9)


def test_a_filter_allowing_every_id_searches_unfiltered(world):
    """Every category named: with no deleted ids in the id space the filter excludes nothing, so the plan is the
    unfiltered index (no selector); after deletes the mask leaves the dead ids out and a selector stays."""
    vec = _query(world, 3)
    everything = allowed_ids(world, lambda r: True)
    ranked = _run(world, vec, Query(k=10, categories=["a", "b", "c"]), 0)
    assert ranked.candidates == len(everything)
    assert ranked.plan == ("index" if len(everything) == world.catalog.id_space else "index+selector")
    _check(world, ranked, oracle(world, vec, everything, 10), False)


def test_always_k_results_when_k_exist_even_if_the_set_is_tiny(world):
    live_items = sorted((row.item_id for row, _ in world.live.values()), key=lambda s: int(s[1:]))
    ids = [live_items[5], live_items[2000], live_items[-1]]
    for threshold in (100_000, 0):
        for given in (ids + ["nope"], JoinedIds.make(",".join(ids + ["nope"]))):  # a list, or one text
            ranked = _run(world, _query(world, 0), Query(k=10, candidate_ids=given, group=False), threshold)
            assert sorted(h.item_id for h, _ in ranked.hits) == sorted(ids)
            assert ranked.unknown_candidate_ids == ["nope"]


def test_deleted_items_are_unknown_candidates(world):
    gone = [f"i{i}" for i in range(0, 200, 17) if f"i{i}" not in {r.item_id for r, _ in world.live.values()}]
    for given in (gone + ["i1"], JoinedIds.make(",".join(gone + ["i1"]))):
        ranked = _run(world, _query(world, 1), Query(k=5, candidate_ids=given, group=False), 100_000)
        assert ranked.unknown_candidate_ids == gone and [h.item_id for h, _ in ranked.hits] == ["i1"]


def test_grouping_over_fetch_loop_finds_k_products_under_a_selector(world):
    # Grouping must keep fetching to find 30 distinct products among the allowed images.
    vec = world.vector(sorted(world.live)[3])
    ranked = _run(world, vec, Query(k=30, categories=["a", "b"]), 0)
    _check(world, ranked, oracle(world, vec, allowed_ids(world, lambda r: r.category in ("a", "b")), 30), False)


def test_pagination_pages_do_not_overlap_and_concatenate_to_the_full_list(world):
    vec = _query(world, 9)
    full = [h.item_id for h, _ in _run(world, vec, Query(k=30, categories=["a"]), 100_000).hits]
    pages = [_run(world, vec, Query(k=10, offset=o, categories=["a"]), 100_000) for o in (0, 10, 20)]
    assert [h.item_id for p in pages for h, _ in p.hits] == full
    assert all(p.has_more for p in pages)


def test_fusion_blends_bm25_and_visual(world):
    vec = _query(world, 11)
    visual_only = _run(world, vec, Query(k=5, q="oak chair"), 100_000)
    keyword_only = _run(world, vec, Query(k=5, q="oak chair", keyword_weight=1.0), 100_000)
    assert [h.item_id for h, _ in visual_only.hits] != [h.item_id for h, _ in keyword_only.hits]
    # every title has the same shape, so every hit has the best BM25 (scaled to 1.0)
    assert all(abs(s - 1.0) < 1e-6 for _, s in keyword_only.hits)
    with pytest.raises(PlanError):
        _run(world, vec, Query(k=5, q="oak", keyword_weight=0.5), 0)
