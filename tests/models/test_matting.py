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
        assert (x, y, w, h) == placed[0].box  # inside the frame or over an edge: the box of the visible pixels
        inside = (placed[0].alpha > 8).sum() * placed[0].visible
        assert (mask > 8.5 / 255).sum() == pytest.approx(inside, abs=1)


def test_over_an_edge_the_box_is_that_of_the_visible_pixels_not_the_whole_object_clipped():
    # a right triangle (wide at the bottom, a point at the top): cut at any edge, its visible part is shorter or
    # narrower on the other axis too, which the whole object's box clipped to the frame would not show
    alpha = np.tril(np.ones((120, 120), np.uint8)) * 255
    cutout = Image.fromarray(np.dstack([np.full((120, 120, 3), 40, np.uint8), alpha]), "RGBA")
    narrower = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        scene, placed = compose_scene(rng, [busy_background(seed)], cutout, [],
                                      SceneConfig(long_side=320, scale=(0.5, 0.7), cut_prob=1.0, degrade=False))
        x, y, w, h = placed[0].box
        assert (x, y, w, h) == mask_box(placed[0].mask(scene.size), threshold=9 / 255)
        ox, oy = placed[0].offset
        full_h, full_w = placed[0].alpha.shape
        clipped_w = min(scene.width, ox + full_w) - max(0, ox)
        clipped_h = min(scene.height, oy + full_h) - max(0, oy)
        narrower += (w < clipped_w - 2) or (h < clipped_h - 2)
    assert narrower >= 4  # the triangle's cut shows on the other axis in many of the cuts


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


def test_matted_crop_is_the_crop_with_the_background_whitened():
    from models.localiser import object_crop
    from models.matting import matted_crop

    image = busy_background(4, (320, 240))
    box = (100, 60, 80, 100)
    plain = object_crop(image, box, 0.1)
    assert matted_crop(image, np.zeros((60, 80), np.float32), box) .tobytes() == plain.tobytes()  # empty: plain
    assert matted_crop(image, np.ones((60, 80), np.float32), box).tobytes() == plain.tobytes()  # all object
    left_half = np.zeros((60, 80), np.float32)
    left_half[:, :35] = 1.0  # the photo's x < 140 is foreground (the box spans 100-180)
    out = np.asarray(matted_crop(image, left_half, box), dtype=np.int32)
    side = plain.width  # 120 px from x = 80
    assert (out[:, : 140 - 80 - 4] == np.asarray(plain, dtype=np.int32)[:, : 140 - 80 - 4]).all()
    assert (out[:, 140 - 80 + 4:] == 255).all() and out.shape[1] == side


def test_tiny_mask_head_finds_the_product(tiny_mask_localiser_path, tiny_localiser_path):
    from models.localiser import Localiser
    from models.localiser_runtime import RuntimeLocaliser
    from models.runtime import RuntimeOptions
    from training.mask_head import mask_iou, scene_mask

    localiser = Localiser.load(tiny_mask_localiser_path)
    assert localiser.has_mask and not Localiser.load(tiny_localiser_path).has_mask
    assert Localiser.load(tiny_localiser_path).locate(busy_background(1)).mask is None
    cutouts = [product_cutout(p, 9) for p in range(6)]
    ious, plain = [], []
    for i in range(8):
        rng = np.random.default_rng([3, i])
        image, placed = compose_scene(rng, [busy_background(200 + i)], cutouts[i % 6], [],
                                      SceneConfig(long_side=256, scale=(0.35, 0.6), cut_prob=0, degrade=False))
        found = localiser.locate(image)
        assert found.detections == localiser.detect(image)  # one pass gives both
        grid = found.mask
        assert max(grid.shape) == 128 and grid.shape[0] / grid.shape[1] == pytest.approx(image.height / image.width, rel=0.05)
        predicted = np.asarray(Image.fromarray(grid, "F").resize(image.size, Image.Resampling.BILINEAR))
        truth = scene_mask(image, placed)
        ious.append(mask_iou(predicted, truth))
        plain.append(mask_iou(np.ones_like(truth), truth))  # "everything is the object"
    assert np.mean(ious) >= 0.4 and np.mean(ious) > 3 * np.mean(plain), (ious, plain)
    runtime = RuntimeLocaliser.load_with(tiny_mask_localiser_path, RuntimeOptions(runtime="auto"))
    other = runtime.locate(image)
    assert np.abs(other.mask - found.mask).max() < 1e-3
    assert [v for d in other.detections for v in d.box] == pytest.approx([v for d in found.detections for v in d.box], abs=0.05)


def test_box_from_mask_keeps_to_the_boxs_square():
    from models.matting import box_from_mask

    mask = np.zeros((30, 40), np.float32)  # a grid over a 400 x 300 photo: 10 px cells
    mask[5:15, 5:12] = 1.0  # the object: x 50-120, y 50-150
    mask[20:28, 30:38] = 1.0  # another one far away: x 300-380, y 200-280
    assert box_from_mask(mask, (400, 300), (60, 60, 50, 80)) == pytest.approx((50, 50, 70, 100))
    assert box_from_mask(mask, (400, 300), (150, 20, 20, 20)) == (150, 20, 20, 20)  # nothing there: the box
