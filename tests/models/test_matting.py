"""Masks of pasted products and matting onto the catalog's white."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.matting import WHITE, coarse_mask, guided_upsample, mask_box, matte
from tests.conftest import busy_background, product_cutout
from training.composite import SceneConfig, compose_scene


def test_a_placed_mask_is_the_pasted_alpha_and_gives_its_box():
    cutout = product_cutout(2, 0)
    for seed in range(8):  # even seeds inside the frame, odd ones over an edge
        rng = np.random.default_rng(seed)
        scene, placed = compose_scene(rng, [busy_background(seed)], cutout, [],
                                      SceneConfig(long_side=320, scale=(0.4, 0.6), cut_prob=seed % 2, degrade=False))
        mask = placed[0].mask(scene.size)
        assert mask.shape == (scene.height, scene.width)
        x, y, w, h = mask_box(mask, threshold=9 / 255)
        bx, by, bw, bh = placed[0].box
        if seed % 2 == 0:
            assert (x, y, w, h) == (bx, by, bw, bh)
        else:  # the box is the whole object's, clipped to the frame: it holds the visible part
            assert bx <= x and by <= y and x + w <= bx + bw and y + h <= by + bh
        inside = (placed[0].alpha > 8).sum() * placed[0].visible
        assert (mask > 8.5 / 255).sum() == pytest.approx(inside, abs=1)


def test_matte_keeps_the_object_and_whitens_the_rest():
    image = busy_background(3)
    mask = np.zeros((image.height, image.width), np.float32)
    mask[50:100, 60:120] = 1.0
    mask[100, 60:120] = 0.5
    out = np.asarray(matte(image, mask), dtype=np.int32)
    src = np.asarray(image, dtype=np.int32)
    assert (out[50:100, 60:120] == src[50:100, 60:120]).all()
    assert (out[:50] == WHITE).all() and (out[101:] == WHITE).all()
    assert np.abs(out[100, 60:120] - (src[100, 60:120] + 255) / 2).max() <= 1
    with pytest.raises(ValueError):
        matte(image, mask[:10])


def test_mask_box_and_coarse_mask():
    assert mask_box(np.zeros((4, 4))) is None
    mask = np.zeros((80, 160), np.float32)
    mask[20:60, 40:120] = 1.0
    assert mask_box(mask) == (40.0, 20.0, 80.0, 40.0)
    coarse = coarse_mask(mask, 16)  # 10 px cells: the block edges fall on cell edges
    assert coarse.shape == mask.shape
    assert coarse[40, 80] == pytest.approx(1.0) and coarse[0, 0] == pytest.approx(0.0)
    assert 0 < coarse[20, 80] < 1  # edges blur at the grid's resolution
    assert mask_box(coarse, 0.5) == pytest.approx((40, 20, 80, 40), abs=6)


def test_guided_upsample_snaps_a_coarse_mask_to_the_photo_edge():
    for edge in (35, 37, 42):  # off the coarse grid's cell edges (8 px cells)
        arr = np.full((64, 64, 3), 30, np.uint8)
        arr[:, edge:] = 220
        truth = np.zeros((64, 64), np.float32)
        truth[:, edge:] = 1.0
        coarse = np.asarray(Image.fromarray(truth, "F").resize((8, 8), Image.Resampling.BOX), dtype=np.float32)
        refined = guided_upsample(coarse, Image.fromarray(arr), radius=8, eps=1e-3)
        assert refined.shape == (64, 64)
        assert ((refined >= 0.5) == (truth >= 0.5)).all()
        assert ((coarse_mask(truth, 8) >= 0.5) != (truth >= 0.5)).any()  # bilinear alone misses the edge
