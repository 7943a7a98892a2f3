"""The query localiser's network in OpenVINO / ONNX Runtime against the eager PyTorch localiser: same detections
on photos of several shapes (the exported graph's height and width are dynamic), and the export cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.localiser import Detection, Localiser, load_localiser
from models.localiser_runtime import RuntimeLocaliser, localiser_key
from models.runtime import RuntimeOptions
from tests.conftest import busy_background, product_cutout
from training.composite import SceneConfig, compose_scene

SHAPES = [(320, 240), (240, 320), (400, 150), (150, 150), (97, 301)]  # landscape, portrait, wide, square, odd


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    cutouts = [product_cutout(p, 9) for p in range(len(SHAPES))]
    out = []
    for i, size in enumerate(SHAPES):
        rng = np.random.default_rng([11, i])
        image, _ = compose_scene(rng, [busy_background(200 + i, size)], cutouts[i], [],
                                 SceneConfig(long_side=max(size), scale=(0.35, 0.6), cut_prob=0, degrade=False))
        out.append(image)
    return out


def confident(found: list[Detection], threshold: float) -> list[Detection]:
    """Detections clear of the score threshold (float rounding may move one sitting on it in or out)."""
    return [d for d in found if d.score >= threshold + 1e-3]


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_runtime_localiser_matches_the_eager_one(runtime, tiny_localiser_path, photos, tmp_path):
    net = load_localiser(tiny_localiser_path)
    eager = Localiser(net)
    engine = RuntimeLocaliser(net, RuntimeOptions(runtime=runtime, threads=1, cache_dir=tmp_path))
    assert engine.runtime_name == runtime
    threshold = net.config.score_thresh
    found_any = 0
    for photo in photos:
        want, got = confident(eager.detect(photo), threshold), confident(engine.detect(photo), threshold)
        assert len(got) == len(want), (photo.size, want, got)
        for a, b in zip(want, got):
            assert b.score == pytest.approx(a.score, abs=1e-3)
            np.testing.assert_allclose(b.box, a.box, atol=0.05)
        found_any += bool(want)
    assert found_any >= 3  # the comparison is not between empty answers


def test_localiser_export_is_cached_per_weights(tiny_localiser_path, photos, tmp_path):
    net = load_localiser(tiny_localiser_path)
    RuntimeLocaliser(net, RuntimeOptions(runtime="onnxruntime", cache_dir=tmp_path))
    exported = tmp_path / localiser_key(net) / "model.onnx"
    stamp = exported.stat().st_mtime_ns
    RuntimeLocaliser(net, RuntimeOptions(runtime="openvino", cache_dir=tmp_path)).detect(photos[0])
    assert exported.stat().st_mtime_ns == stamp  # reused by the other engine, not exported again
    other = load_localiser(tiny_localiser_path)
    with torch.no_grad():
        other.head.classification_head.cls_logits.bias.add_(0.5)  # other weights: another export
    assert localiser_key(other) != localiser_key(net)


def test_runtime_torch_is_the_eager_localiser(tiny_localiser_path, photos):
    net = load_localiser(tiny_localiser_path)
    engine = RuntimeLocaliser(net, RuntimeOptions(runtime="torch"))
    assert engine.runtime_name == "torch"
    assert engine.detect(photos[0]) == Localiser(net).detect(photos[0])


def test_warm_up_compiles_every_shape_a_photo_can_have(tiny_localiser_path, tmp_path):
    engine = RuntimeLocaliser(load_localiser(tiny_localiser_path),
                              RuntimeOptions(runtime="openvino", threads=1, cache_dir=tmp_path))
    size = engine.config.image_size
    shapes = engine.padded_shapes()
    assert (1, 3, size, size) in shapes and len(shapes) == 2 * (size // 32) - 1
    engine.warm_up()
    assert sorted(engine._static.shapes) == shapes
    rng = np.random.default_rng(5)
    for _ in range(12):  # any photo, however odd its aspect, meets a shape compiled at start-up
        w, h = (int(v) for v in rng.integers(1, 900, size=2))
        engine.detect(Image.new("RGB", (w, h), (120, 90, 60)))
    assert sorted(engine._static.shapes) == shapes
