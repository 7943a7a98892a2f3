"""Input forms, batch search, admin endpoints (auth, reload, upsert/delete), metrics and CORS."""

import base64

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from indexer import build_generation
from tests.app.test_search_api import jpeg
from tests.conftest import draw_product, write_catalog

ADMIN = {"X-API-Key": "s3cret"}


@pytest.fixture(scope="module")
def client(built_data_dir):
    settings = Settings(data_dir=built_data_dir, reload_interval_s=0, device="cpu", max_batch_queries=3,
                        cors_origins=["https://shop.example"])
    with TestClient(create_app(settings)) as c:
        yield c


def test_raw_body_and_base64_json_give_the_same_answer_as_multipart(client):
    image = jpeg(draw_product(4, 6))
    multipart = client.post("/search", files={"image": ("q.jpg", image, "image/jpeg")}, data={"k": "3"}).json()
    raw = client.post("/search?k=3", content=image, headers={"Content-Type": "image/jpeg"}).json()
    as_json = client.post("/search", json={"image_base64": base64.b64encode(image).decode(), "k": 3}).json()
    ids = [r["item_id"] for r in multipart["results"]]
    assert ids == [r["item_id"] for r in raw["results"]] == [r["item_id"] for r in as_json["results"]]
    assert multipart["results"][0]["product_id"] == "p4"


def test_bad_inputs_in_each_form(client):
    assert client.post("/search", json={"image_base64": "!!!not base64", "k": 3}).json()["error"]["code"] == "invalid_base64"
    r = client.post("/search", json={"k": 3})
    assert r.status_code == 422 and "image_base64" in r.json()["error"]["message"]
    r = client.post("/search", json={"image_base64": "aGk=", "k": 3, "colour": "red"})
    assert r.status_code == 422  # unknown fields are refused, never ignored
    r = client.post("/search", content=b"hello", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = client.post("/search", files={"image": ("q.jpg", jpeg(draw_product(1, 1)), "image/jpeg")},
                    data={"keyword_weight": "0.5"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "keyword_weight_without_q"


def test_batch_search_answers_each_query(client):
    queries = [{"image_base64": base64.b64encode(jpeg(draw_product(p, 6))).decode(), "k": 2} for p in (1, 5)]
    body = client.post("/search/batch", json={"queries": queries}).json()
    assert [r["results"][0]["product_id"] for r in body["responses"]] == ["p1", "p5"]
    too_many = client.post("/search/batch", json={"queries": queries * 2})
    assert too_many.status_code == 422 and too_many.json()["error"]["code"] == "too_many_queries"
    bad = client.post("/search/batch", json={"queries": [queries[0], {"image_base64": "@@", "k": 1}]})
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("queries[1]")


def test_pagination_over_http(client):
    image = jpeg(draw_product(2, 6))
    first = client.post("/search?k=3", content=image, headers={"Content-Type": "image/jpeg"}).json()
    second = client.post("/search?k=3&offset=3", content=image, headers={"Content-Type": "image/jpeg"}).json()
    both = client.post("/search?k=6", content=image, headers={"Content-Type": "image/jpeg"}).json()
    assert [r["product_id"] for r in first["results"] + second["results"]] == [r["product_id"] for r in both["results"]]
    assert first["has_more"] is True


def test_metrics_expose_stage_histograms_and_errors(client):
    client.post("/search?k=1", content=jpeg(draw_product(0, 3)), headers={"Content-Type": "image/jpeg"})
    client.get("/items/nope")
    text = client.get("/metrics").text
    assert 'lookalike_stage_seconds_count{stage="embed"}' in text
    assert 'lookalike_searches_total{endpoint="search",plan="index"}' in text
    assert 'lookalike_errors_total{code="unknown_item"}' in text
    assert "lookalike_items 24.0" in text


def test_cors_allows_the_configured_origin_only(client):
    ok = client.options("/search", headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"})
    assert ok.headers.get("access-control-allow-origin") == "https://shop.example"
    other = client.options("/search", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers


def test_admin_is_disabled_without_a_key(client):
    assert client.post("/admin/reload").json()["error"]["code"] == "admin_disabled"


@pytest.fixture()
def admin_client(tmp_path, embedder):
    build_generation(write_catalog(tmp_path / "cat", products=3, images=2), tmp_path / "data", embedder, workers=0,
                     progress=False)
    settings = Settings(data_dir=tmp_path / "data", reload_interval_s=0, device="cpu", admin_api_key="s3cret",
                        search_api_key="shop-key")
    with TestClient(create_app(settings)) as c:
        c.headers.update({"X-API-Key": "shop-key"})
        yield c


def _similar_products(client, item_id="p0-v0", k=10):
    return [r["product_id"] for r in client.get(f"/items/{item_id}/similar", params={"k": k}).json()["results"]]


def test_search_key_is_required_when_configured(admin_client):
    image = jpeg(draw_product(0, 3))
    r = admin_client.post("/search", content=image, headers={"Content-Type": "image/jpeg", "X-API-Key": "wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert admin_client.get("/healthz").status_code == 200  # ops endpoints stay open


def test_admin_upsert_is_found_at_once_and_delete_never_comes_back(admin_client):
    assert admin_client.post("/admin/reload", headers={"X-API-Key": "bad"}).status_code == 401
    photo = jpeg(draw_product(5, 0))  # a product the catalog does not have
    meta = '{"product_id": "p5", "title": "new star lamp", "category": "chairs"}'
    r = admin_client.put("/admin/items/p5-v0", files={"image": ("n.jpg", photo, "image/jpeg")},
                         data={"metadata": meta}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "created"
    query = jpeg(draw_product(5, 4))
    first = admin_client.post("/search?k=1", content=query, headers={"Content-Type": "image/jpeg"}).json()
    assert first["results"][0]["item_id"] == "p5-v0"
    assert admin_client.get("/items/p5-v0").json()["title"] == "new star lamp"
    assert admin_client.get("/items/p5-v0/image").content == photo
    keyword = admin_client.post("/search?k=5&q=star", content=query, headers={"Content-Type": "image/jpeg"}).json()
    assert [r["item_id"] for r in keyword["results"]] == ["p5-v0"]

    # update a base item: its old vector must not answer any more
    r = admin_client.put("/admin/items/p1-v0", files={"image": ("n.jpg", jpeg(draw_product(5, 1)), "image/jpeg")},
                         data={"metadata": '{"product_id": "p1", "title": "moved"}'}, headers=ADMIN)
    assert r.json()["status"] == "updated"
    assert admin_client.get("/items/p1-v0").json()["title"] == "moved"

    for item in ("p2-v0", "p2-v1", "p5-v0"):
        assert admin_client.delete(f"/admin/items/{item}", headers=ADMIN).status_code == 200
    assert "p2" not in _similar_products(admin_client)
    assert admin_client.get("/items/p2-v0").status_code == 404
    assert admin_client.delete("/admin/items/p2-v0", headers=ADMIN).status_code == 404
    near_p2 = admin_client.post("/search?k=10&group=false", content=jpeg(draw_product(2, 4)),
                                headers={"Content-Type": "image/jpeg"}).json()
    assert not {"p2-v0", "p2-v1", "p5-v0"} & {r["item_id"] for r in near_p2["results"]}
    # 6 base images, 3 tombstoned (p2-v0, p2-v1 deleted; p1-v0 replaced), 1 live delta row (the new p1-v0)
    assert admin_client.get("/readyz").json()["items"] == 4


def test_admin_upsert_rejects_bad_metadata_and_images(admin_client):
    photo = jpeg(draw_product(5, 0))
    r = admin_client.put("/admin/items/x", files={"image": ("n.jpg", photo, "image/jpeg")},
                         data={"metadata": '{"title": "no product"}'}, headers=ADMIN)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_metadata"
    r = admin_client.put("/admin/items/x", files={"image": ("n.jpg", b"junk", "image/jpeg")},
                         data={"metadata": '{"product_id": "p"}'}, headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"]["code"] == "not_an_image"
    assert admin_client.get("/items/x").status_code == 404


def test_admin_reindex_runs_in_the_background_and_swaps(admin_client, tmp_path):
    data_dir = admin_client.app.state.settings.data_dir  # a file root by default
    outside = write_catalog(tmp_path / "cat2", products=4, images=1)
    r = admin_client.post("/admin/reindex", json={"catalog": str(outside)}, headers=ADMIN)
    assert r.status_code == 403 and r.json()["error"]["code"] == "catalog_outside_roots"
    catalog = write_catalog(data_dir / "catalogs" / "cat2", products=4, images=1)
    assert admin_client.post("/admin/reindex", json={"catalog": str(data_dir / "nope.csv")},
                             headers=ADMIN).status_code == 404
    r = admin_client.post("/admin/reindex", json={"catalog": str(catalog)}, headers=ADMIN)
    assert r.status_code == 202
    import time

    for _ in range(600):
        job = admin_client.get("/admin/reindex", headers=ADMIN).json()
        if job["state"] != "running":
            break
        time.sleep(0.1)
    assert job["state"] == "done", job
    assert admin_client.get("/readyz").json() | {"model_id": None} == {
        "status": "ready", "generation": job["generation"], "model_id": None, "items": 4, "watcher": "disabled",
        "last_reload_error": None}


def test_requests_past_the_deadline_get_a_json_503(built_data_dir):
    settings = Settings(data_dir=built_data_dir, reload_interval_s=0, device="cpu", request_timeout_s=1e-6)
    with TestClient(create_app(settings)) as c:
        r = c.post("/search?k=1", content=jpeg(draw_product(0, 3)), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "timeout"
