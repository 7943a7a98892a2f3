"""The VectorStore contract, run against every backend in tests/vector_backends.py (seeded data, exact oracle)."""

import numpy as np
import pytest

from indexer import IdFilter, IndexSpec, SearchParams, VectorStore, exact_top_k
from indexer import faiss_store
from indexer.faiss_store import FaissCpuStore, FaissGpuStore, build_flat
from indexer.index_choice import recall_at_k
from indexer.vector_index import gpu_available
from indexer.vector_store import BaseVectorStore, merge_top_k
from tests.vector_backends import BACKENDS

N, D = 6000, 16
SPECS = [pytest.param(IndexSpec("Flat"), id="flat"), pytest.param(IndexSpec("IVF32,Flat"), id="ivf-tuned"),
         pytest.param(IndexSpec("IVF32,PQ8x4fs,Refine(Flat)"), id="ivf-pq-refine-tuned")]


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around 120 centres (neighbourhoods as in real embeddings) and 40 fresh queries."""
    rng = np.random.default_rng(1338)
    centres = rng.standard_normal((120, D)).astype(np.float32)
    x = centres[rng.integers(0, 120, N + 40)] + 0.4 * rng.standard_normal((N + 40, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:N], x[N:]


@pytest.fixture(params=BACKENDS)
def make(request):
    return request.param


def _changed(store: VectorStore, data) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Remove 300 base ids, replace 20, add 50 new ids: the store as it is after deletes and a delta."""
    base, _ = data
    rng = np.random.default_rng(3)
    live = {i: base[i] for i in range(N)}
    removed = rng.choice(N, 300, replace=False)
    assert store.remove(removed) == 300 and store.remove(removed[:5]) == 0
    for i in removed:
        del live[int(i)]
    new = rng.standard_normal((70, D)).astype(np.float32)
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    new_ids = np.arange(N + 10, N + 80, dtype=np.int64)
    store.add(new[:50], new_ids[:50])
    store.add(new[50:], new_ids[50:])
    store.add(new[:1] * -1, new_ids[:1])  # replace an added row
    live.update({int(i): v for i, v in zip(new_ids, new, strict=True)})
    live[int(new_ids[0])] = -new[0]
    ids = np.array(sorted(live), dtype=np.int64)
    return live, ids


def _oracle(live: dict[int, np.ndarray], queries: np.ndarray, k: int, allowed=None):
    ids = np.array(sorted(i for i in live if allowed is None or i in allowed), dtype=np.int64)
    return exact_top_k(np.stack([live[int(i)] for i in ids]), queries, k, ids)


@pytest.mark.parametrize("spec", SPECS)
def test_search_matches_brute_force_after_deletes_and_adds(make, spec, data, tmp_path):
    base, queries = data
    store = make(base, spec, tmp_path)
    live, live_ids = _changed(store, data)
    assert store.ntotal == len(live)
    rng = np.random.default_rng(9)
    filters = [None, set(rng.choice(live_ids, 40, replace=False).tolist()),  # 0.7%: a few per list
               set(rng.choice(live_ids, 3000, replace=False).tolist()) | {N + 10, 1, 2, 3},
               set(range(N)) | set(live_ids.tolist())]  # every id, removed ones too: the unfiltered search
    for allowed in filters:
        as_filter = None if allowed is None else IdFilter.from_ids(sorted(allowed))
        truth_scores, truth = _oracle(live, queries, 10, allowed)
        exact_scores, exact = store.search(queries, 10, as_filter, SearchParams(exact=True))
        assert np.array_equal(exact, truth)
        assert np.allclose(exact_scores, truth_scores, atol=1e-5)
        scores, ids = store.search(queries, 10, as_filter)  # the ANN at its tuned nprobe
        found = ids[ids >= 0]
        assert np.isin(found, live_ids).all()  # never a removed id
        if allowed is not None:
            assert np.isin(found, sorted(allowed)).all()  # never one outside the filter
        assert (ids >= 0).all()  # k results whenever k exist
        assert recall_at_k(ids, truth) >= (0.999 if spec.factory == "Flat" else 0.9)
        assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
        if allowed is not None and len(allowed) > N:
            unfiltered = store.search(queries, 10)[1]
            assert np.array_equal(ids, unfiltered)
            mask = np.zeros(N + 80, dtype=bool)
            mask[sorted(allowed)] = True
            assert np.array_equal(store.search(queries, 10, IdFilter.from_mask(mask))[1], unfiltered)


@pytest.mark.parametrize("spec", SPECS)
def test_filters_as_masks_ids_and_tiny_sets(make, spec, data, tmp_path):
    base, queries = data
    store = make(base, spec, tmp_path)
    mask = np.zeros(N, dtype=bool)
    mask[::7] = True
    by_mask = store.search(queries[:5], 10, IdFilter.from_mask(mask), SearchParams(exact=True))
    by_ids = store.search(queries[:5], 10, np.flatnonzero(mask)[::-1], SearchParams(exact=True))
    assert np.array_equal(by_mask[1], by_ids[1])
    scores, ids = store.search(queries[:2], 10, [5, 77, 5000])  # fewer allowed than k: all, then -1
    assert sorted(ids[0][:3].tolist()) == [5, 77, 5000] and (ids[:, 3:] == -1).all()
    assert (scores[:, 3:] < -1e30).all()
    assert (store.search(queries[:2], 10, [])[1] == -1).all()


def test_vectors_save_and_load_keep_every_change(make, data, tmp_path):
    base, queries = data
    store = make(base, IndexSpec("Flat"), tmp_path)
    live, _ = _changed(store, data)
    some = np.array([i for i in list(live)[:3]] + [N + 10], dtype=np.int64)
    assert np.allclose(store.vectors(some), np.stack([live[int(i)] for i in some]), atol=1e-6)
    dead = next(i for i in range(N) if i not in live)
    with pytest.raises(KeyError):
        store.vectors([dead])
    assert store.memory_bytes >= N * D
    if not isinstance(store, FaissCpuStore):
        pytest.skip("save/load is backend-specific beyond FAISS")
    store.save(tmp_path / "store")
    again = type(store).load(tmp_path / "store")
    assert again.ntotal == store.ntotal
    assert np.array_equal(again.search(queries, 10)[1], store.search(queries, 10)[1])


def test_base_class_validates_every_backend_input(make, data, tmp_path):
    base, queries = data
    store = make(base, IndexSpec("Flat"), tmp_path)
    assert isinstance(store, VectorStore) and isinstance(store, BaseVectorStore)
    with pytest.raises(ValueError, match="dimension"):
        store.search(queries[:, :5], 3)
    with pytest.raises(ValueError, match="floating"):
        store.search(queries.astype(np.int32), 3)
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must"):
            store.search(queries, k)
    with pytest.raises(ValueError, match="non-negative"):
        store.search(queries, 3, [-1, 4])
    with pytest.raises(ValueError, match="ids"):
        store.add(queries[:2], [1])
    with pytest.raises(ValueError, match="finite"):
        store.add(np.full((1, D), np.nan, np.float32), [N + 1])


def test_gpu_store_falls_back_to_the_cpu_over_fetch_path_here(data):
    base, queries = data
    store = FaissGpuStore.from_parts(build_flat(base, "float32"), None)
    assert not store.supports_filter  # FAISS GPU indexes ignore selectors: the store over-fetches and filters
    if not gpu_available():
        assert not store.on_gpu and not store.index.supports_selector
    allowed = np.arange(0, N, 500)
    _, ids = store.search(queries[:3], 10, allowed)
    assert np.isin(ids[ids >= 0], allowed).all() and (ids >= 0).all()


@pytest.mark.parametrize("code", ["sq8", "fp16"])
def test_exact_scoring_of_compact_codes_by_id_matches_their_decoded_vectors(code, data, monkeypatch):
    """The exact plan scores 8-bit/fp16 codes in place, a chunk of rows at a time: same scores as FAISS's own
    decoder, whatever the chunk size and however the ids are spread (a small chunk forces many chunks)."""
    base, queries = data
    flat = build_flat(base, code)
    decoded = flat.sa_decode(flat.sa_encode(base))
    scorer = faiss_store.CodeScorer.of(flat)
    ids = np.sort(np.random.default_rng(5).choice(N, N // 10, replace=False))  # gathered: a tenth of the base
    expected = queries[:3] @ decoded[ids].T
    for chunk in (7, 4096):
        monkeypatch.setattr(faiss_store, "GATHER_CHUNK", chunk)
        np.testing.assert_allclose(scorer.scores(queries[:3], ids), expected, rtol=1e-5, atol=1e-5)
    store = FaissCpuStore(flat)
    monkeypatch.setattr(faiss_store, "GATHER_CHUNK", 7)
    scores, found = store.search(queries[:3], 10, ids, SearchParams(exact=True))
    truth_scores, truth = exact_top_k(decoded[ids], queries[:3], 10, ids)
    np.testing.assert_array_equal(found, truth)
    np.testing.assert_allclose(scores, truth_scores, rtol=1e-5, atol=1e-5)


def test_merge_top_k_orders_by_score_then_id_and_pads():
    a = (np.array([[0.9, 0.5]], np.float32), np.array([[7, 3]]))
    b = (np.array([[0.9, -1.0]], np.float32), np.array([[2, -1]]))
    scores, ids = merge_top_k([a, b], 5)
    assert ids.tolist() == [[2, 7, 3, -1, -1]] and scores[0, 0] == np.float32(0.9)


def test_id_filter_masks_and_ids_agree():
    ids = IdFilter.from_ids([9, 3, 3, 100])
    assert ids.ids.tolist() == [3, 9, 100] and len(ids) == 3
    assert ids.contains(np.array([3, 4, 100, 101])).tolist() == [True, False, True, False]
    mask = IdFilter.from_mask(ids.mask(50))  # ids past the mask are dropped
    assert mask.ids.tolist() == [3, 9] and mask.contains(np.array([9, 100])).tolist() == [True, False]
