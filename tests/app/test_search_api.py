import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from tests.conftest import PRODUCTS, draw_product


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(built_data_dir):
    settings = Settings(data_dir=built_data_dir, reload_interval_s=0, max_upload_bytes=200_000, max_pixels=4_000_000,
                        device="cpu")
    with TestClient(create_app(settings)) as c:
        yield c


def search(client, image: bytes, **form):
    return client.post("/search", files={"image": ("q.jpg", image, "image/jpeg")}, data=form)


def test_unseen_photo_finds_its_product_first(client):
    hits = 0
    for p in range(PRODUCTS):
        body = search(client, jpeg(draw_product(p, 7)), k="3").json()
        hits += body["results"][0]["product_id"] == f"p{p}"
    assert hits >= PRODUCTS - 1


def test_results_are_grouped_by_product_and_ordered(client):
    body = search(client, jpeg(draw_product(2, 5)), k="5").json()
    products = [r["product_id"] for r in body["results"]]
    assert len(products) == len(set(products)) == 5
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert body["plan"] == "index" and body["grouped"] is True
    assert set(body["timings_ms"]) - {"localise"} == {"decode", "embed", "search", "fetch"}
    first = body["results"][0]
    assert first["image_url"] == f"/items/{first['item_id']}/image"
    assert first["attributes"]["brand"] in {"acme", "globex"}


def test_ungrouped_returns_images(client):
    body = search(client, jpeg(draw_product(2, 5)), k="6", group="false").json()
    assert len(body["results"]) == 6
    assert len({r["item_id"] for r in body["results"]}) == 6
    assert len({r["product_id"] for r in body["results"]}) < 6  # several images of the same products


def test_keyword_then_image_ranks_only_keyword_hits(client):
    body = search(client, jpeg(draw_product(0, 5)), k="10", q="lamp number 3").json()
    assert body["plan"] == "exact" and body["candidates"] == 3
    assert [r["product_id"] for r in body["results"]] == ["p3"]


def test_candidate_ids_restrict_and_unknown_ones_are_reported(client):
    body = search(client, jpeg(draw_product(0, 5)), k="10", candidate_ids="p4-v0,p5-v1,nope",
                  group="false").json()
    assert sorted(r["item_id"] for r in body["results"]) == ["p4-v0", "p5-v1"]
    assert body["unknown_candidate_ids"] == ["nope"]


@pytest.mark.parametrize("given", [
    ["p4-v0,p5-v1,nope"],                    # one comma-separated text: resolved without splitting it
    ["p4-v0", "p5-v1", "nope"],              # repeated fields: joined once
    ["p4-v0 , p5-v1", " nope ,"],            # spaces and an empty id: split and stripped as before
])
def test_candidate_ids_give_the_same_answer_in_every_form(client, given):
    body = search(client, jpeg(draw_product(0, 5)), k="10", candidate_ids=given, group="false").json()
    assert sorted(r["item_id"] for r in body["results"]) == ["p4-v0", "p5-v1"]
    assert body["candidates"] == 2 and body["unknown_candidate_ids"] == ["nope"]


def test_too_many_candidate_ids_in_one_text_are_refused(built_data_dir):
    settings = Settings(data_dir=built_data_dir, reload_interval_s=0, device="cpu", max_candidates=3)
    with TestClient(create_app(settings)) as small:
        fine = search(small, jpeg(draw_product(0, 5)), candidate_ids="p4-v0,p5-v1,nope")
        assert fine.status_code == 200, fine.text
        refused = search(small, jpeg(draw_product(0, 5)), candidate_ids="p4-v0,p5-v1,p6-v0,nope")
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "too_many_candidates"


def test_category_filter(client):
    body = search(client, jpeg(draw_product(0, 5)), k="10", category="tables").json()
    assert body["results"] and all(r["category"] == "tables" for r in body["results"])
    assert len(body["results"]) == PRODUCTS // 2


def test_more_like_this_excludes_the_item_and_its_product(client):
    body = client.get("/items/p1-v0/similar", params={"k": 3}).json()
    assert len(body["results"]) == 3
    assert all(r["product_id"] != "p1" for r in body["results"])
    same = client.get("/items/p1-v0/similar", params={"k": 1, "same_product": "true"}).json()
    assert same["results"][0]["product_id"] == "p1" and same["results"][0]["item_id"] != "p1-v0"


def test_item_lookup_and_image(client):
    item = client.get("/items/p3-v1").json()
    assert item["product_id"] == "p3" and item["category"] == "tables"
    image = client.get(item["image_url"])
    assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"


@pytest.mark.parametrize(("make", "form", "status", "code"), [
    (lambda: b"hello, not an image", {}, 400, "not_an_image"),
    (lambda: jpeg(draw_product(1, 1))[:900], {}, 400, "truncated_image"),
    (lambda: b"\xff" * 300_000, {}, 413, "upload_too_large"),
    (lambda: b"", {}, 400, "empty_upload"),
    (lambda: jpeg(draw_product(1, 1)), {"k": "0"}, 422, "invalid_request"),
    (lambda: jpeg(draw_product(1, 1)), {"k": "1000"}, 422, "k_too_large"),
    (lambda: jpeg(draw_product(1, 1)), {"k": "ten"}, 422, "invalid_request"),
    (lambda: jpeg(draw_product(1, 1)), {"candidate_ids": ","}, 422, "empty_candidates"),
])
def test_bad_requests_get_json_errors_and_service_keeps_serving(client, make, form, status, code):
    response = search(client, make(), **form)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert search(client, jpeg(draw_product(0, 1)), k="1").status_code == 200


def test_decompression_bomb_is_refused(client):
    buf = io.BytesIO()
    Image.new("L", (2500, 2500)).save(buf, "PNG")  # 6.25 MP > the 4 MP limit of this client, tiny file
    response = search(client, buf.getvalue())
    assert response.status_code == 413 and response.json()["error"]["code"] == "image_too_large"


def test_unknown_item_is_404(client):
    response = client.get("/items/does-not-exist/similar")
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_item"
    assert client.get("/items/does-not-exist").status_code == 404


def test_missing_image_field_is_422(client):
    response = client.post("/search", data={"k": "3"})
    assert response.status_code == 422 and "image" in response.json()["error"]["message"]


def test_health_ready_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["items"] == PRODUCTS * 3
    assert "/search" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_not_ready_without_an_index(tmp_path):
    with TestClient(create_app(Settings(data_dir=tmp_path, reload_interval_s=0, device="cpu"))) as c:
        assert c.get("/readyz").status_code == 503
        response = c.post("/search", files={"image": ("q.jpg", jpeg(draw_product(0, 0)), "image/jpeg")})
        assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"
