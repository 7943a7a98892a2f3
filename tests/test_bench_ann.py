import numpy as np

from bench.ann import NeighbourProfile, _nearest_distance, _rotate_within_span


def _catalog(products: int = 80, images: int = 4, dim: int = 16, seed: int = 0):
    """Products in a few families (clustered centres), a few unit-vector images each."""
    rng = np.random.default_rng(seed)
    families = rng.standard_normal((8, dim))
    centres = families[rng.integers(0, 8, products)] + 0.3 * rng.standard_normal((products, dim))
    x = np.repeat(centres, images, axis=0) + 0.2 * rng.standard_normal((products * images, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(products), images)


def test_rotation_within_span_keeps_each_products_scatter_but_makes_new_images():
    rng = np.random.default_rng(1)
    residual = rng.standard_normal((3, 5, 7)).astype(np.float32)
    residual -= residual.mean(axis=1, keepdims=True)
    turned = _rotate_within_span(residual, rng)
    for before, after in zip(residual, turned):
        np.testing.assert_allclose(after.T @ after, before.T @ before, atol=1e-4)
        np.testing.assert_allclose(after.sum(axis=0), 0, atol=1e-5)
        assert not np.allclose(after, before, atol=1e-3)


def test_fitted_bandwidth_gives_the_real_nearest_centre_distance():
    x, products = _catalog()
    profile = NeighbourProfile.fit(x, products)
    real = np.median(_nearest_distance(profile.centres))
    drawn = profile._centres(len(profile.centres), np.random.default_rng(0))
    assert 0 < profile.bandwidth < 4
    assert abs(np.median(_nearest_distance(drawn)) - real) < 0.05 * real
    # a kernel twice as wide spreads the generated centres further apart: the fit is not a constant
    wider = profile._centres(len(profile.centres), np.random.default_rng(0), 2 * profile.bandwidth)
    assert np.median(_nearest_distance(wider)) > 1.1 * real


def test_generate_gives_n_unit_images_of_products_with_the_real_spread():
    x, products = _catalog()
    profile = NeighbourProfile.fit(x, products)
    vectors, queries = profile.generate(1001, seed=3, queries=17)
    assert vectors.shape == (1001, 16) and queries.shape == (17, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1, atol=1e-5)
    assert len(np.unique(vectors.round(5), axis=0)) == 1001  # new images, not copies of each other
    # each query's nearest catalog image is far closer than a typical one (it shows a catalog product)
    sims = queries @ vectors.T
    assert np.median(sims.max(axis=1)) > np.median(sims) + 0.3
    again, _ = profile.generate(1001, seed=3, queries=17)
    np.testing.assert_array_equal(vectors, again)


def test_synthetic_profile_still_generates():
    vectors, queries = NeighbourProfile.synthetic(8).generate(300, seed=0, queries=5)
    assert vectors.shape == (300, 8) and queries.shape == (5, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
