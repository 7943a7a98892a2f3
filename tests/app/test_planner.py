"""Each planner branch against an exact brute-force oracle on seeded synthetic vectors."""

from pathlib import Path

import numpy as np
import pytest

from app.planner import PlanError, Query, plan_and_search
from indexer import CatalogRow, CatalogStore, IndexSpec, VectorIndex
from indexer.live import LiveCatalog
from indexer.store import create_store

N, D, PER_PRODUCT = 3000, 24, 3
WORDS = ["oak", "pine", "steel", "glass", "velvet"]


def make_catalog(tmp: Path, spec: IndexSpec) -> tuple[LiveCatalog, np.ndarray, list[CatalogRow]]:
    rng = np.random.default_rng(1338)
    vectors = rng.standard_normal((N, D)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [CatalogRow(item_id=f"i{i}", product_id=f"p{i // PER_PRODUCT}", image=Path(f"/x/{i}.jpg"),
                       title=f"{WORDS[i % 5]} chair {i}", category=["a", "b", "c"][i % 3]) for i in range(N)]
    create_store(tmp / "catalog.db", rows, [str(i) for i in range(N)])
    index = VectorIndex.build(vectors, spec)
    return LiveCatalog(tmp, CatalogStore(tmp / "catalog.db"), vectors, index), vectors, rows


def oracle(vectors, rows, query_vec, allowed, k, group=True):
    """Brute force: score every allowed image, keep each product's best, take k."""
    scores = vectors @ query_vec
    order = sorted(allowed, key=lambda i: (-scores[i], i))
    out, seen = [], set()
    for i in order:
        if group and rows[i].product_id in seen:
            continue
        seen.add(rows[i].product_id)
        out.append(rows[i].item_id)
    return out[:k]


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    return make_catalog(tmp_path_factory.mktemp("flat"), IndexSpec("Flat"))


def _run(catalog, vec, query, exact_threshold):
    return plan_and_search(catalog, vec, query, exact_threshold=exact_threshold, overfetch=2)


@pytest.mark.parametrize("threshold, plan", [(100_000, "exact"), (0, "index+selector")])
def test_keyword_and_category_branches_match_brute_force(flat, threshold, plan):
    catalog, vectors, rows = flat
    vec = vectors[7] * 0.6 + vectors[8] * 0.4
    vec /= np.linalg.norm(vec)
    allowed = [i for i, r in enumerate(rows) if "oak" in r.title and r.category == "b"]
    for group in (True, False):
        ranked = _run(catalog, vec, Query(k=10, q="oak", categories=["b"], group=group), threshold)
        assert ranked.plan == plan and ranked.candidates == len(allowed)
        assert [h.item_id for h, _ in ranked.hits] == oracle(vectors, rows, vec, allowed, 10, group)


def test_unconstrained_branch_matches_brute_force_with_grouping(flat):
    catalog, vectors, rows = flat
    ranked = _run(catalog, vectors[100], Query(k=20), 100_000)
    assert ranked.plan == "index"
    assert [h.item_id for h, _ in ranked.hits] == oracle(vectors, rows, vectors[100], range(N), 20)


def test_always_k_results_when_k_exist_even_if_the_set_is_tiny(flat):
    catalog, vectors, rows = flat
    ids = ["i5", "i2000", "i2999"]
    for threshold in (100_000, 0):
        ranked = _run(catalog, vectors[0], Query(k=10, candidate_ids=ids + ["nope"], group=False), threshold)
        assert sorted(h.item_id for h, _ in ranked.hits) == sorted(ids)
        assert ranked.unknown_candidate_ids == ["nope"]


def test_grouping_over_fetch_loop_finds_k_products_under_a_selector(flat):
    # Only one product's worth of images scores high; grouping must keep fetching to find 30 products.
    catalog, vectors, rows = flat
    ranked = _run(catalog, vectors[3], Query(k=30, categories=["a", "b"]), 0)
    allowed = [i for i, r in enumerate(rows) if r.category in ("a", "b")]
    assert [h.item_id for h, _ in ranked.hits] == oracle(vectors, rows, vectors[3], allowed, 30)


def test_pagination_pages_do_not_overlap_and_concatenate_to_the_full_list(flat):
    catalog, vectors, rows = flat
    full = [h.item_id for h, _ in _run(catalog, vectors[9], Query(k=30), 100_000).hits]
    pages = [_run(catalog, vectors[9], Query(k=10, offset=o), 100_000) for o in (0, 10, 20)]
    assert [h.item_id for p in pages for h, _ in p.hits] == full
    assert all(p.has_more for p in pages)


def test_fusion_blends_bm25_and_visual(flat):
    catalog, vectors, rows = flat
    visual_only = _run(catalog, vectors[11], Query(k=5, q="oak chair"), 100_000)
    keyword_only = _run(catalog, vectors[11], Query(k=5, q="oak chair", keyword_weight=1.0), 100_000)
    assert [h.item_id for h, _ in visual_only.hits] != [h.item_id for h, _ in keyword_only.hits]
    # every title has the same shape, so every hit has the best BM25 (scaled to 1.0)
    assert all(abs(s - 1.0) < 1e-6 for _, s in keyword_only.hits)
    with pytest.raises(PlanError):
        _run(catalog, vectors[11], Query(k=5, q="oak", keyword_weight=0.5), 0)


def test_ivf_index_branch_with_selector_matches_brute_force(tmp_path):
    catalog, vectors, rows = make_catalog(tmp_path, IndexSpec("IVF16,Flat", nprobe=16))
    allowed = [i for i, r in enumerate(rows) if r.category == "c"]
    ranked = _run(catalog, vectors[42], Query(k=15, categories=["c"]), 0)
    assert ranked.plan == "index+selector"
    assert [h.item_id for h, _ in ranked.hits] == oracle(vectors, rows, vectors[42], allowed, 15)
