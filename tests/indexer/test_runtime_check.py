"""A generation embedded by one runtime/precision is served by another only when their vectors are shown to agree."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from indexer import CatalogStore, GenerationError, build_generation, read_manifest
from indexer.generations import CATALOG_DB, VECTORS
from indexer.generations import generations_dir
from indexer.runtime_check import check_compatible
from models import Embedder, ModelConfig, RuntimeOptions, build_model
from tests.app.test_search_api import jpeg
from tests.conftest import draw_product, write_catalog


def open_generation(data_dir, name):
    gen_dir = generations_dir(data_dir) / name
    vectors = np.load(gen_dir / VECTORS, mmap_mode="r")
    return read_manifest(gen_dir), CatalogStore(gen_dir / CATALOG_DB), lambda ids: vectors[ids]


def test_manifest_records_runtime_and_its_measured_agreement(tmp_path, runtime_cache):
    model = build_model(ModelConfig(image_size=128))
    openvino = Embedder(model, device="cpu", options=RuntimeOptions(runtime="openvino", cache_dir=runtime_cache))
    manifest = build_generation(write_catalog(tmp_path / "c", products=3, images=2), tmp_path / "data", openvino,
                                workers=0, progress=False)
    assert (manifest.runtime, manifest.precision) == ("openvino", "fp32")
    assert manifest.runtime_agreement is not None and manifest.runtime_agreement["count"] == 6
    assert manifest.runtime_agreement["min"] >= 0.995


def test_mismatch_is_refused_unless_shown_to_agree(built_data_dir, embedder):
    from indexer import current_generation

    name = current_generation(built_data_dir)
    manifest, store, vectors = open_generation(built_data_dir, name)
    try:
        assert (manifest.runtime, manifest.precision) == ("torch", "fp32")
        assert check_compatible(name, manifest, embedder, store, vectors) is None  # same runtime: no check needed
        bf16 = Embedder(embedder.model, device="cpu", options=RuntimeOptions(runtime="torch", precision="bf16"))
        shown = check_compatible(name, manifest, bf16, store, vectors)  # re-embeds a sample of its images
        assert shown is not None and shown.count == min(16, manifest.count) and shown.mean >= 0.995
        with pytest.raises(GenerationError, match="do not agree"):  # the same measurement, a stricter bar
            check_compatible(name, manifest, bf16, store, vectors, min_cosine=min(1.0, shown.mean + 1e-4))
        other = Embedder(build_model(ModelConfig(image_size=128, embedding_dim=64)), device="cpu")
        with pytest.raises(GenerationError, match="model"):
            check_compatible(name, manifest, other, store, vectors)
    finally:
        store.close()


def test_service_refuses_a_generation_its_runtime_does_not_agree_with(tmp_path, embedder):
    data = tmp_path / "data"
    build_generation(write_catalog(tmp_path / "a", products=2, images=2), data, embedder, workers=0, progress=False)
    strict = Settings(data_dir=data, reload_interval_s=0, device="cpu", runtime="torch", precision="bf16",
                      runtime_min_cosine=1.0)
    with TestClient(create_app(strict)) as client:
        assert client.get("/readyz").json()["status"] == "not_ready"
        assert client.post("/admin/reload").status_code in (403, 409)
    served = Settings(data_dir=data, reload_interval_s=0, device="cpu")  # auto: OpenVINO fp32 agrees with torch fp32
    with TestClient(create_app(served)) as client:
        assert client.app.state.service.embedder.runtime_name == "openvino"
        response = client.post("/search", files={"image": ("q.jpg", jpeg(draw_product(1, 5)), "image/jpeg")},
                               data={"k": "1"})
        assert response.status_code == 200 and response.json()["results"][0]["product_id"] == "p1"
