"""Every runtime against PyTorch fp32 on real images, the export cache, auto's fallback when an engine is missing."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models import Embedder, ModelConfig, RuntimeOptions, RuntimeUnavailable, build_model
from models.agreement import agreement, embed_paths
from models.runtime import native_bf16
from models.runtime_export import export_key
from tests.conftest import draw_product

MIN_COSINE = 0.995


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("runtime-images")
    paths = []
    for p in range(6):
        path = root / f"p{p}.jpg"
        draw_product(p, 7).save(path, quality=90)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(image_size=128))


@pytest.fixture(scope="module")
def reference(model, images) -> np.ndarray:
    return embed_paths(Embedder(model, device="cpu", options=RuntimeOptions(runtime="torch", precision="fp32")), images)


def run(model, images, cache: Path, **options: object) -> tuple[Embedder, np.ndarray]:
    embedder = Embedder(model, device="cpu", options=RuntimeOptions(cache_dir=cache, **options))  # type: ignore[arg-type]
    return embedder, embed_paths(embedder, images)


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_fp32_runtimes_agree_with_pytorch(runtime, model, images, reference, runtime_cache):
    embedder, vectors = run(model, images, runtime_cache, runtime=runtime, precision="fp32")
    assert (embedder.runtime_name, embedder.precision) == (runtime, "fp32")
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    found = agreement(vectors, reference)
    assert found.min >= MIN_COSINE, found
    # Different images still give different vectors (the engine is not returning one constant).
    assert float(vectors[0] @ vectors[1]) < 0.99


def test_bf16_agrees_with_fp32_where_it_runs(model, images, reference, runtime_cache):
    _, torch_bf16 = run(model, images, runtime_cache, runtime="torch", precision="bf16")
    assert agreement(torch_bf16, reference).min >= MIN_COSINE
    assert not np.array_equal(torch_bf16, reference)  # it really ran in bf16
    if native_bf16("openvino", torch.device("cpu")):
        embedder, ov_bf16 = run(model, images, runtime_cache, runtime="openvino", precision="bf16")
        assert embedder.precision == "bf16"
        assert agreement(ov_bf16, reference).min >= MIN_COSINE
    else:  # no AVX512-BF16/AMX: an explicit bf16 request is refused, and auto takes fp32
        with pytest.raises(RuntimeUnavailable, match="bf16"):
            run(model, images, runtime_cache, runtime="openvino", precision="bf16")
        assert run(model, images[:1], runtime_cache, runtime="openvino", precision="auto")[0].precision == "fp32"


def test_auto_takes_openvino_on_the_cpu_and_falls_back_when_it_is_missing(model, images, reference, runtime_cache,
                                                                          monkeypatch):
    assert run(model, images[:1], runtime_cache, runtime="auto")[0].runtime_name == "openvino"
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    embedder, vectors = run(model, images, runtime_cache, runtime="auto")
    assert embedder.runtime_name == "onnxruntime"
    assert agreement(vectors, reference).min >= MIN_COSINE
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    embedder, vectors = run(model, images, runtime_cache, runtime="auto")
    assert embedder.runtime_name == "torch"
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    with pytest.raises(RuntimeUnavailable, match="not installed"):
        run(model, images, runtime_cache, runtime="openvino")


def test_export_is_cached_by_model_and_a_trained_checkpoint_gets_its_own(model, images, tmp_path):
    first, _ = run(model, images[:1], tmp_path, runtime="openvino", precision="fp32")
    exported = tmp_path / export_key(model) / "model.onnx"
    stamp = exported.stat().st_mtime_ns
    run(model, images[:1], tmp_path, runtime="onnxruntime")
    assert exported.stat().st_mtime_ns == stamp  # reused, not exported again
    assert any((exported.parent / "openvino-cache").iterdir())  # OpenVINO's compiled-blob cache

    trained = build_model(ModelConfig(image_size=128))
    with torch.no_grad():  # stands in for a fine-tuned checkpoint: same architecture, other weights
        trained.pool.p.fill_(4.0)
        trained.trunk.net._conv_head.weight.mul_(1.1)
    assert export_key(trained) != export_key(model)
    tuned, vectors = run(trained, images, tmp_path, runtime="openvino", precision="fp32")
    assert tuned.model_id != first.model_id
    own_reference = embed_paths(Embedder(trained, device="cpu"), images)
    assert agreement(vectors, own_reference).min >= MIN_COSINE
    assert not np.allclose(vectors, embed_paths(first, images), atol=1e-3)


def test_embedder_pickles_without_its_engine_and_rebuilds_it(model, images, runtime_cache):
    embedder, vectors = run(model, images, runtime_cache, runtime="auto")
    clone = pickle.loads(pickle.dumps(embedder))
    assert (clone.runtime_name, clone.precision) == (embedder.runtime_name, embedder.precision)
    np.testing.assert_allclose(embed_paths(clone, images), vectors, atol=1e-6)


def test_int8_is_opt_in_and_measured(model, images, reference, tmp_path):
    with pytest.raises(RuntimeUnavailable, match="calibration"):
        run(model, images, tmp_path, runtime="openvino", precision="int8")
    with pytest.raises(RuntimeUnavailable, match="openvino"):
        run(model, images, tmp_path, runtime="onnxruntime", precision="int8")
    embedder, vectors = run(model, images, tmp_path, runtime="openvino", precision="int8",
                            calibration_images=tuple(images))
    assert embedder.precision == "int8"
    found = agreement(vectors, reference)
    assert 0.8 < found.mean < 0.99999  # quantised for real, and still close to fp32


def test_pixel_batches_give_the_vectors_of_normalised_ones(model, images, reference, runtime_cache):
    """Workers and request threads hand uint8 pixels over; PyTorch normalises them exactly as ``preprocess``
    does (bit for bit), and the exported graphs, which normalise inside, agree with both forms."""
    torch_embedder = Embedder(model, device="cpu", options=RuntimeOptions(runtime="torch", precision="fp32"))
    loaded = [torch_embedder.load(str(p)) for p in images]
    pixels = torch.stack([torch_embedder.pixels(im) for im in loaded])
    normalised = torch.stack([torch_embedder.preprocess(im) for im in loaded])
    assert pixels.dtype == torch.uint8 and normalised.dtype == torch.float32
    np.testing.assert_array_equal(torch_embedder.embed_tensors(pixels), torch_embedder.embed_tensors(normalised))
    np.testing.assert_array_equal(torch_embedder.embed_tensors(pixels), reference)
    for runtime in ("openvino", "onnxruntime"):
        embedder = Embedder(model, device="cpu", options=RuntimeOptions(runtime=runtime, cache_dir=runtime_cache))
        assert embedder.runtime.input_kind == "pixels"
        from_pixels, from_normalised = embedder.embed_tensors(pixels), embedder.embed_tensors(normalised)
        assert agreement(from_pixels, from_normalised).min >= 0.99999
        assert agreement(from_pixels, reference).min >= MIN_COSINE
