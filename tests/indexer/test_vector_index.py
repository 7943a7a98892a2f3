import numpy as np
import pytest

from indexer import IndexSpec, VectorIndex, exact_top_k


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_index_matches_brute_force():
    base, queries = _unit(2000, 32, 1338), _unit(20, 32, 7)
    index = VectorIndex.build(base, IndexSpec("Flat"))
    scores, ids = index.search(queries, 10)
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    assert (ids == truth).all()
    assert np.allclose(scores, np.take_along_axis(queries @ base.T, truth, 1), atol=1e-5)


def test_ivf_recall_rises_with_nprobe_without_mutating_the_index():
    base, queries = _unit(20000, 32, 1338), _unit(100, 32, 9)
    index = VectorIndex.build(base, IndexSpec("IVF64,Flat", nprobe=4))
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :10]

    def recall(nprobe: int) -> float:
        _, ids = index.search(queries, 10, nprobe=nprobe)
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)])

    low, mid, full = recall(1), recall(8), recall(64)
    assert low <= mid <= full and full == 1.0
    assert index.index.nprobe == 1  # per-call parameters never touched the shared index


def test_selector_restricts_results():
    base, query = _unit(500, 16, 3), _unit(1, 16, 4)
    allowed = np.array([5, 17, 99, 250], dtype=np.int64)
    for spec in (IndexSpec("Flat"), IndexSpec("IVF8,Flat", nprobe=8)):
        index = VectorIndex.build(base, spec)
        _, ids = index.search(query, 10, allowed_ids=allowed)
        found = ids[0][ids[0] >= 0]
        assert set(found) == set(allowed.tolist())
        _, exact_ids = exact_top_k(base[allowed], query, 10, allowed)
        exact_ids = exact_ids[0][exact_ids[0] >= 0]
        assert list(found) == list(exact_ids)


def test_dimension_mismatch_is_an_error():
    index = VectorIndex.build(_unit(10, 8, 1), IndexSpec("Flat"))
    with pytest.raises(ValueError, match="dimension"):
        index.search(_unit(1, 9, 1), 3)


def test_exact_top_k_orders_by_score_then_id():
    vectors = np.array([[1, 0], [0, 1], [1, 0], [0.5, 0.5]], dtype=np.float32)
    scores, ids = exact_top_k(vectors, np.array([1, 0], np.float32), 3, np.array([10, 11, 12, 13]))
    assert list(ids[0]) == [10, 12, 13]
    assert list(scores[0]) == [1.0, 1.0, 0.5]
    scores, ids = exact_top_k(vectors, np.array([[1, 0], [0, 1]], np.float32), 6)  # fewer than k: -1 padded
    assert ids.tolist() == [[0, 2, 3, 1, -1, -1], [1, 3, 0, 2, -1, -1]]


def test_ivf_probes_more_lists_when_a_filter_leaves_the_probed_ones_short():
    base, query = _unit(5000, 16, 11), _unit(1, 16, 12)
    index = VectorIndex.build(base, IndexSpec("IVF64,Flat", nprobe=1))
    # ids far from the query live in lists that nprobe=1 never opens
    far = np.argsort(base @ query[0])[:20].astype(np.int64)
    scores, ids = index.search(query, 10, allowed_ids=far)
    assert (ids[0] >= 0).all()
    _, exact_ids = exact_top_k(base[far], query, 10, far)
    assert list(ids[0]) == list(exact_ids[0])
