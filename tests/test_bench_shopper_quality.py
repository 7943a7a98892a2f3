"""The shopper bench's spoiled-mask oracles and its gallery blend (pure functions; no model, no scenes)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.shopper_quality import blend_gallery, grown_or_shrunk, mask_at_crop_resolution

SIZE = (120, 100)  # width, height
BOX = (40.0, 30.0, 40.0, 40.0)


def square_mask() -> np.ndarray:
    mask = np.zeros((SIZE[1], SIZE[0]), np.float32)
    mask[30:70, 40:80] = 1.0
    return mask


def test_a_grown_mask_spills_and_a_shrunk_one_eats_in_by_the_given_pixels():
    mask = square_mask()
    grown, shrunk = grown_or_shrunk(mask, 3), grown_or_shrunk(mask, -3)
    assert grown.sum() == 46 * 46 and grown[27, 37] == 1.0 and grown[26, 36] == 0.0
    assert shrunk.sum() == 34 * 34 and shrunk[33, 43] == 1.0 and shrunk[32, 42] == 0.0


def test_a_fine_grid_over_the_crop_keeps_the_mask_and_a_coarse_one_blurs_its_edge():
    mask = square_mask()
    fine = mask_at_crop_resolution(mask, SIZE, BOX, 48)  # the crop window is 48 px: one cell per pixel
    assert np.abs(fine - mask).max() < 1e-5
    coarse = mask_at_crop_resolution(mask, SIZE, BOX, 6)
    assert 0.0 < coarse[50, 40] < 1.0 and 0.0 < coarse[50, 38] < 1.0  # the edge is smeared over a cell
    assert coarse[50, 60] == pytest.approx(1.0, abs=1e-5)  # the middle stays object
    assert coarse[0, 0] == 0.0 and coarse[:, :30].max() == 0.0  # nothing outside the crop window


def test_the_blend_moves_each_products_images_toward_its_composites_and_leaves_others_alone():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(4, 8)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    products = ["a", "a", "b", "c"]
    composites = rng.normal(size=(3, 8)).astype(np.float32)
    owners = ["a", "a", "b"]
    assert np.allclose(blend_gallery(gallery, products, composites, owners, 0.0), gallery, atol=1e-6)
    full = blend_gallery(gallery, products, composites, owners, 1.0)
    mean_a = composites[:2].mean(axis=0) / np.linalg.norm(composites[:2].mean(axis=0))
    assert np.allclose(full[0], mean_a, atol=1e-6) and np.allclose(full[1], mean_a, atol=1e-6)
    assert np.allclose(full[2], composites[2] / np.linalg.norm(composites[2]), atol=1e-6)
    half = blend_gallery(gallery, products, composites, owners, 0.5)
    assert np.allclose(half[3], gallery[3], atol=1e-6)  # "c" has no composites
    assert np.allclose(np.linalg.norm(half, axis=1), 1.0, atol=1e-6)
    assert float(half[0] @ mean_a) > float(gallery[0] @ mean_a)
