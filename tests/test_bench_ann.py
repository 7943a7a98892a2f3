from dataclasses import replace

import numpy as np
import pytest

from bench.ann import (NeighbourProfile, _nearest_distance, _rotate_within_span, intrinsic_dimension,
                       neighbour_check, silverman_bandwidth)


def _catalog(products: int = 80, images: int = 4, dim: int = 16, seed: int = 0, spread: float = 0.3,
             noise: float = 0.2):
    """Products in a few families (clustered centres), a few unit-vector images each."""
    rng = np.random.default_rng(seed)
    families = rng.standard_normal((8, dim))
    centres = families[rng.integers(0, 8, products)] + spread * rng.standard_normal((products, dim))
    x = np.repeat(centres, images, axis=0) + noise * rng.standard_normal((products * images, dim))
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


@pytest.mark.parametrize("dim", [2, 5])
def test_intrinsic_dimension_is_the_manifolds_not_the_ambient_space(dim):
    rng = np.random.default_rng(0)
    flat = rng.uniform(size=(2000, dim)) @ np.linalg.qr(rng.standard_normal((40, 40)))[0][:dim]  # in 40-d
    assert abs(intrinsic_dimension(flat.astype(np.float32), rng) - dim) < 0.35 * dim


def test_silverman_bandwidth_shrinks_with_more_points_and_fewer_dimensions():
    assert silverman_bandwidth(10_000, 10) < silverman_bandwidth(1000, 10) < silverman_bandwidth(1000, 20) < 1
    # the textbook value in one dimension: 1.06 n^(-1/5)
    assert abs(silverman_bandwidth(1000, 1) - 1.06 * 1000 ** -0.2) < 0.01


def test_every_real_product_parents_the_same_number_of_new_ones_with_its_own_image_count():
    rng = np.random.default_rng(2)
    x, products = _catalog()
    x, products = x[:-2], products[:-2]  # the last product has 2 images, the others 4
    profile = NeighbourProfile.fit(x, products)
    centres, parent = profile._centres(3 * len(profile.centres), rng)
    assert np.array_equal(np.bincount(parent), np.full(len(profile.centres), 3))
    images = profile._images(centres, parent, rng)
    assert [len(i) for i in images] == [2 if p == len(profile.centres) - 1 else 4 for p in parent]
    # a new centre keeps its parent's norm (how alike the product's images are) and stays near it
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), np.linalg.norm(profile.centres[parent], axis=1),
                               rtol=1e-5)
    moved = np.linalg.norm(centres - profile.centres[parent], axis=1)
    assert 0 < np.median(moved) < np.median(_nearest_distance(profile.centres))


def test_kernel_moves_centres_within_their_neighbourhoods_span():
    # product centres on a 2-d plane through the origin, inside 16-d: new centres must stay on it
    rng = np.random.default_rng(3)
    plane = np.linalg.qr(rng.standard_normal((16, 2)))[0].T
    centres = rng.standard_normal((60, 2)) @ plane
    x = np.repeat(centres, 3, axis=0) + 0.001 * rng.standard_normal((180, 16))
    profile = NeighbourProfile.fit(x.astype(np.float32), np.repeat(np.arange(60), 3))
    drawn, parent = profile._centres(600, rng)
    offsets = drawn - profile.centres[parent]
    off_plane = offsets - (offsets @ plane.T) @ plane
    assert np.linalg.norm(off_plane) < 0.02 * np.linalg.norm(offsets)


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


def test_generated_catalog_has_about_the_real_gap_and_ivf_recall_and_a_wrong_kernel_does_not():
    x, products = _catalog(products=300, images=5, dim=24, spread=0.5, noise=0.4)
    profile = NeighbourProfile.fit(x, products)

    def stats(p: NeighbourProfile) -> dict:
        return neighbour_check(x, p.generate(len(x), seed=1)[0], queries=200, only_generated=True)["generated"]

    real = neighbour_check(x, x, queries=200)["real"]
    fitted, wide = stats(profile), stats(replace(profile, bandwidth=3 * profile.bandwidth))
    for key in ("gap_p10", "gap_p50", "gap_p90"):
        assert fitted[key] / real[key] < 1.5 < wide[key] / real[key], (key, real, fitted, wide)
    assert abs(fitted["ivf_nprobe4_recall"] - real["ivf_nprobe4_recall"]) < 0.06, (real, fitted)


def test_products_of_any_image_count_generate_with_few_queries():
    x, products = _catalog()
    products = products.copy()
    products[:3] = products[4]  # product 0 keeps 1 image, product 1 gets 7: three image counts
    profile = NeighbourProfile.fit(x, products)
    assert sorted(len(d[0]) for d in profile.donors) == [1, 4, 7]
    vectors, queries = profile.generate(500, seed=0, queries=1)  # one query: two image counts draw none
    assert vectors.shape == (500, 16) and queries.shape == (1, 16)


def test_synthetic_profile_still_generates():
    vectors, queries = NeighbourProfile.synthetic(8).generate(300, seed=0, queries=5)
    assert vectors.shape == (300, 8) and queries.shape == (5, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_scaled_bandwidth_keeps_the_real_nearest_centre_scaling_where_the_real_size_kernel_clumps():
    x, products = _catalog(products=200, images=3, dim=16)
    profile = NeighbourProfile.fit(x, products)
    real = np.median(_nearest_distance(profile.centres))
    times = 4
    expected = real * times ** (-1 / profile.intrinsic_dim)
    wider = profile.bandwidth_for(times * len(profile.centres))
    assert profile.bandwidth_for(len(profile.centres)) == profile.bandwidth < wider
    assert profile.bandwidth_for(1000 * len(profile.centres)) == profile.scaled_bandwidths[-1]
    assert list(profile.scaled_bandwidths) == sorted(profile.scaled_bandwidths)

    def spacing(bandwidth: float) -> float:
        centres, _ = profile._centres(times * len(profile.centres), np.random.default_rng(5), bandwidth)
        return float(np.median(_nearest_distance(centres)))

    assert abs(spacing(wider) - expected) < 0.1 * expected
    assert spacing(profile.bandwidth) < 0.85 * expected  # each real product's children in a clump
