"""LOOKALIKE_VECTOR_BACKEND=milvus end to end on embedded milvus-lite: build, serve, admin changes, rollback."""

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cli.main import cli
from app.main import create_app
from app.settings import Settings
from indexer import GenerationError, build_generation, read_manifest
from indexer.generations import VECTOR_STORE, VECTORS
from indexer.generations import generations_dir
from tests.app.test_search_api import jpeg
from tests.conftest import draw_product, write_catalog

pytest.importorskip("pymilvus")
from indexer.milvus_store import MilvusStore, connect  # noqa: E402

ADMIN = {"X-API-Key": "s3cret"}


def _alias_target(client, alias: str) -> str:
    return client.describe_alias(alias)["collection_name"]


def test_milvus_generations_serve_take_changes_and_follow_rollback(tmp_path, embedder, monkeypatch):
    data = tmp_path / "data"
    settings = Settings(data_dir=data, vector_backend="milvus", milvus_uri=str(tmp_path / "milvus.db"),
                        reload_interval_s=0, device="cpu", admin_api_key="s3cret")
    target = settings.milvus_target()
    first = build_generation(write_catalog(tmp_path / "a", products=2, images=2), data, embedder, workers=0,
                             progress=False, milvus=target)
    second = build_generation(write_catalog(tmp_path / "b", products=4, images=2), data, embedder, workers=0,
                              progress=False, milvus=target)
    assert second.vector_backend == "milvus" and second.milvus_collection == "lookalike_gen_000002"
    assert second.index_factory == "milvus:FLAT"
    second_dir = generations_dir(data) / second.generation
    assert (second_dir / VECTOR_STORE / "milvus.json").is_file() and not (second_dir / VECTORS).exists()
    milvus = connect(settings.milvus_uri)
    assert _alias_target(milvus, target.alias) == second.milvus_collection  # publish moved the alias

    with TestClient(create_app(settings)) as client:
        state = client.app.state.service
        assert client.get("/readyz").json()["generation"] == second.generation
        query = jpeg(draw_product(3, 4))
        top = client.post("/search?k=1", content=query, headers={"Content-Type": "image/jpeg"}).json()
        assert top["results"][0]["product_id"] == "p3"
        filtered = client.post("/search?k=4&category=chairs&group=false", content=query,
                               headers={"Content-Type": "image/jpeg"}).json()["results"]
        assert len(filtered) == 4 and {r["category"] for r in filtered} == {"chairs"}  # k when k exist

        # Deletes and upserts go into the collection itself (no tombstones merged at query time).
        collection = second.milvus_collection
        gone = [r["id"] for r in milvus.query(collection, filter='product_id == "p3"', output_fields=["id"])]
        assert len(gone) == 2
        for item in ("p3-v0", "p3-v1"):
            assert client.delete(f"/admin/items/{item}", headers=ADMIN).status_code == 200
        after = client.post("/search?k=3", content=query, headers={"Content-Type": "image/jpeg"}).json()
        assert "p3" not in [r["product_id"] for r in after["results"]]
        assert milvus.query(collection, filter=f"id in {gone}", output_fields=["id"]) == []
        r = client.put("/admin/items/p5-v0", files={"image": ("n.jpg", jpeg(draw_product(5, 0)), "image/jpeg")},
                       data={"metadata": '{"product_id": "p5", "title": "new", "category": "tables"}'}, headers=ADMIN)
        assert r.status_code == 200
        new = client.post("/search?k=1", content=jpeg(draw_product(5, 4)), headers={"Content-Type": "image/jpeg"})
        assert new.status_code == 200, new.text
        assert new.json()["results"][0]["item_id"] == "p5-v0"
        added = milvus.query(collection, filter='product_id == "p5"', output_fields=["category"])
        assert [row["category"] for row in added] == ["tables"]  # filed with its category (the partition key)

        # Rollback moves the pointer and the alias; the service follows.
        for key, value in {"LOOKALIKE_DATA_DIR": str(data), "LOOKALIKE_VECTOR_BACKEND": "milvus",
                           "LOOKALIKE_MILVUS_URI": settings.milvus_uri}.items():
            monkeypatch.setenv(key, value)
        result = CliRunner().invoke(cli, ["rollback"])
        assert result.exit_code == 0, result.output
        assert _alias_target(milvus, target.alias) == first.milvus_collection
        replaced = state.generation
        state.maybe_reload()
        assert client.get("/readyz").json()["generation"] == first.generation
        top = client.post("/search?k=1", content=jpeg(draw_product(1, 4)), headers={"Content-Type": "image/jpeg"})
        assert top.json()["results"][0]["product_id"] == "p1"
        # The replaced generation, once retired, lets go of its Milvus client (its gRPC channel and threads).
        assert replaced.vectors.client._handler is not None
        assert state.close_retired(now=float("inf")) == [second.generation]
        assert replaced.vectors.client._handler is None
    milvus.close()


def test_a_collection_made_by_another_model_is_refused(tmp_path, embedder):
    data = tmp_path / "data"
    target = Settings(data_dir=data, vector_backend="milvus", milvus_uri=str(tmp_path / "m.db")).milvus_target()
    built = build_generation(write_catalog(tmp_path / "a", products=2, images=1), data, embedder, workers=0,
                             progress=False, milvus=target)
    client = connect(target.uri)
    with pytest.raises(GenerationError, match="made by model"):
        MilvusStore.open(client, built.milvus_collection, model_id="another-model", embedded=True)
    store = MilvusStore.open(client, built.milvus_collection, model_id=built.model_id, embedded=True)
    assert store.ntotal == 2 and store.dim == built.dim
    assert read_manifest(generations_dir(data) / built.generation).milvus_collection == built.milvus_collection
    # The service refuses to serve a Milvus generation without being told where Milvus is.
    with pytest.raises(GenerationError, match="LOOKALIKE_VECTOR_BACKEND=milvus"):
        from app.serving import LoadedGeneration

        LoadedGeneration.open(data, built.generation, milvus=None)
    # vectors come back as they were written
    ids = np.arange(2)
    assert np.allclose(np.linalg.norm(store.vectors(ids), axis=1), 1, atol=1e-4)


def test_index_refuses_an_unknown_vector_backend(tmp_path):
    result = CliRunner().invoke(cli, ["index", str(tmp_path / "catalog.csv"), "--vector-backend", "qdrant"])
    assert result.exit_code == 2 and "unknown vector backend 'qdrant'" in result.output
