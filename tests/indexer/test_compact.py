"""The compact-vector transform: PCA by hand on tiny data, saved with the generation, applied to every query."""

import numpy as np
import pytest

from app.serving import LoadedGeneration
from indexer import build_generation, read_manifest
from indexer.compact import CompactTransform
from indexer.generations import COMPACT, generations_dir
from tests.conftest import IMAGES_PER_PRODUCT, PRODUCTS


def test_pca_keeps_the_top_axes_and_renormalises():
    rng = np.random.default_rng(1338)
    # Variance along axis 0 >> axis 1 >> axis 2: the 2-d PCA keeps axes 0 and 1.
    x = rng.standard_normal((2000, 3)).astype(np.float32) * np.array([10.0, 3.0, 0.1], np.float32)
    transform = CompactTransform.fit(x, 2)
    assert transform.describe() == "pca2" and transform.output_dim(3) == 2
    assert np.allclose(np.abs(transform.components), [[1, 0, 0], [0, 1, 0]], atol=0.02)
    out = transform.apply(x[:5])
    centred = x[:5] - transform.mean
    by_hand = np.array([[sum(c[j] * axis[j] for j in range(3)) for axis in transform.components] for c in centred])
    assert np.allclose(out, by_hand / np.linalg.norm(by_hand, axis=1, keepdims=True), atol=1e-5)
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert transform.apply(x[0]).shape == (2,)  # one vector in, one out
    whitened = CompactTransform.fit(x, 2, whiten=True)
    assert whitened.describe() == "pca-whiten2" and np.allclose(whitened.scales, [10, 3], rtol=0.1)


def test_identity_when_not_reducing_and_for_old_generations(tmp_path):
    x = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32)
    for dim in (None, 8, 64):
        assert CompactTransform.fit(x, dim).is_identity
    assert CompactTransform.fit(x, 4).describe() == "pca4"
    assert CompactTransform.load(tmp_path / "absent.npz").is_identity
    transform = CompactTransform.fit(x, 4, whiten=True)
    transform.save(tmp_path / "t.npz")
    again = CompactTransform.load(tmp_path / "t.npz")
    assert again.describe() == "pca-whiten4" and np.allclose(again.apply(x), transform.apply(x))


@pytest.fixture(scope="module")
def compact_generation(tmp_path_factory, catalog_path, embedder):
    data = tmp_path_factory.mktemp("compact-data")
    manifest = build_generation(catalog_path, data, embedder, workers=0, progress=False, compact_dim=4)
    return data, manifest


def test_a_generation_stores_compact_vectors_and_searches_through_the_same_transform(compact_generation, embedder):
    data, manifest = compact_generation
    gen_dir = generations_dir(data) / manifest.generation
    assert manifest.compact == "pca-whiten4" and manifest.vector_dim == 4 and manifest.dim == embedder.dim
    assert read_manifest(gen_dir).compact == "pca-whiten4" and (gen_dir / COMPACT).is_file()
    gen = LoadedGeneration.open(data, manifest.generation)
    try:
        assert gen.vectors.dim == 4 and gen.vectors.ntotal == PRODUCTS * IMAGES_PER_PRODUCT
        full = np.load(gen_dir / "vectors.npy")
        # The stored vector of an item is its embedding through the transform (as 8-bit codes); a query through the same
        # transform finds it first.
        assert np.allclose(gen.vectors.vectors([3])[0], gen.encode(full[3]), atol=0.01)  # 8-bit codes
        _, ids = gen.vectors.search(gen.encode(full[3]), 1)
        assert ids[0, 0] == 3
    finally:
        gen.catalog.close()


def test_a_transform_that_does_not_match_the_manifest_is_refused(compact_generation, tmp_path):
    import shutil

    from indexer import GenerationError

    data, manifest = compact_generation
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (generations_dir(copy) / manifest.generation / COMPACT).unlink()  # now the identity: 1280-d queries, 4-d store
    with pytest.raises(GenerationError, match="compact transform"):
        LoadedGeneration.open(copy, manifest.generation)
