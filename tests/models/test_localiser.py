"""The object localiser: crops framed like catalog photos, save/load, and a tiny trained localiser that finds
products (trained on the fly: see tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.localiser import ActivationLocaliser, Localiser, object_crop
from tests.conftest import busy_background, product_cutout
from training.composite import SceneConfig, compose_scene
from training.localiser import box_iou, evaluate_localiser


def test_object_crop_is_the_square_around_the_box_with_margin():
    image = Image.new("RGB", (400, 300))
    crop = object_crop(image, (100, 100, 50, 100), margin=0.1)  # side = 100 * 1.2
    assert crop.size == (120, 120)


def test_object_crop_shifts_inside_the_photo_and_pads_when_too_big():
    image = Image.new("RGB", (200, 100), (10, 20, 30))
    near_edge = object_crop(image, (0, 0, 40, 40), margin=0.25)  # 60 px square, centred at (20, 20): shifted in
    assert near_edge.size == (60, 60)
    assert near_edge.getpixel((0, 0)) == (10, 20, 30)
    too_big = object_crop(image, (50, 0, 100, 100), margin=0.1)  # 120 px square in a 100 px tall photo: padded
    assert too_big.size == (120, 120)
    assert (10, 20, 30) in {too_big.getpixel((60, y)) for y in range(120)}
    assert (235, 235, 235) in {too_big.getpixel((60, y)) for y in (0, 119)}


def test_box_iou_by_hand():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0


def scenes(count: int, seed: int):
    cutouts = [product_cutout(p, 9) for p in range(6)]
    backgrounds = [busy_background(100 + s) for s in range(3)]
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        image, placed = compose_scene(rng, backgrounds, cutouts[i % 6], [],
                                      SceneConfig(long_side=320, scale=(0.35, 0.6), cut_prob=0, degrade=False))
        out.append((image, placed[0].box))
    return out


def test_tiny_trained_localiser_finds_products_and_round_trips(tiny_localiser_path):
    localiser = Localiser.load(tiny_localiser_path)
    test = scenes(12, seed=7)
    quality = evaluate_localiser(localiser, test)
    assert quality["iou>=0.5"] >= 0.75, quality
    image, _ = test[0]
    first = localiser.detect(image)
    assert first == sorted(first, key=lambda d: -d.score)
    x, y, w, h = first[0].box
    assert 0 <= x and 0 <= y and x + w <= image.width + 1e-3 and y + h <= image.height + 1e-3


def test_activation_baseline_returns_one_box_inside_the_photo():
    image, _ = scenes(1, seed=3)[0]
    found = ActivationLocaliser(image_size=128).detect(image)
    assert len(found) == 1
    x, y, w, h = found[0].box
    assert w > 0 and h > 0 and x + w <= image.width + 1e-3 and y + h <= image.height + 1e-3


def test_localiser_file_is_checked(tmp_path):
    bad = tmp_path / "bad.pt"
    import torch

    torch.save({"format": "something else"}, bad)
    with pytest.raises(ValueError, match="not a Lookalike localiser"):
        Localiser.load(bad)
