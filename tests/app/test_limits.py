"""Bounded work per request (issue 11, rows 1-6 and 8): odd image shapes, unauthenticated or oversized bodies
(with and without Content-Length), and huge lists are refused with a 4xx before they cost memory.

Bodies are streamed through httpx's ASGI transport, which hands the app one chunk per ``receive``, so the
tests count exactly how many bytes the service read before it answered.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from tests.app.test_search_api import jpeg
from tests.conftest import draw_product

ADMIN_KEY = "limits-admin"
CHUNK = 1024 * 1024


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def app(built_data_dir):
    settings = Settings(data_dir=built_data_dir, reload_interval_s=0, device="cpu", admin_api_key=ADMIN_KEY,
                        max_upload_bytes=2 * 1024 * 1024, max_batch_body_bytes=4 * 1024 * 1024,
                        max_query_bytes=48 * 1024)  # httpx sends at most 64 KiB of query string
    app = create_app(settings)
    with TestClient(app):  # runs the lifespan: the generation is loaded
        yield app


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


MULTIPART_HEAD = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
                  b"Content-Type: image/jpeg\r\n\r\n")


class Counter:
    """An async body of ``total`` bytes in 1 MiB chunks (after ``head``) that counts what was pulled from it."""

    def __init__(self, total: int, head: bytes = b"") -> None:
        self.total = total
        self.head = head
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.read < self.total:
            chunk = (self.head if self.read == 0 else b"") + b"x" * min(CHUNK, self.total - self.read)
            self.read += len(chunk)
            yield chunk


def stream(app, method: str, path: str, body: Counter, headers: dict[str, str]) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.request(method, path, content=body, headers=headers)
    return asyncio.run(go())


# --- images (rows 1-3) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("width", "height"), [(1, 4000), (4000, 1), (1, 40_000_000)])
def test_strips_are_refused_before_decoding(client, width, height):
    """Row 1-3: a 1x4000 PNG cost +600 MB (the short side was resized up to the input size); a 1x40,000,000
    PNG made PyTorch ask for terabytes and answered 500."""
    data = png(width, height)
    for response in (client.post("/search", files={"image": ("q.png", data, "image/png")}),
                     client.post("/search", content=data, headers={"Content-Type": "image/png"})):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "bad_image_shape"


def test_wide_but_allowed_image_is_searched(client):
    image = Image.new("RGB", (1800, 200), (250, 250, 250))
    image.paste(draw_product(3, 1).resize((200, 200)), (800, 0))
    response = client.post("/search", files={"image": ("q.jpg", jpeg(image), "image/jpeg")}, data={"k": "1"})
    assert response.status_code == 200, response.text


# --- auth before the body (rows 4, 5) --------------------------------------------------------------------------

@pytest.mark.parametrize("declare_length", [True, False])
def test_reindex_without_a_key_is_refused_before_the_body_is_read(app, declare_length):
    """Row 4: an 800 MB JSON body to /admin/reindex without a key was read whole before the 401."""
    body = Counter(800 * CHUNK)
    headers = {"Content-Type": "application/json"}
    if declare_length:
        headers["Content-Length"] = str(body.total)
    response = stream(app, "POST", "/admin/reindex", body, headers)
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    assert body.read == 0


def test_upsert_without_a_key_is_refused_before_the_upload_is_read(app):
    """Row 5: a 200 MB multipart upload to PUT /admin/items/x without a key was spooled to disk first."""
    body = Counter(200 * CHUNK, MULTIPART_HEAD)
    response = stream(app, "PUT", "/admin/items/x", body,
                      {"Content-Type": "multipart/form-data; boundary=b", "X-API-Key": "wrong"})
    assert response.status_code == 401
    assert body.read == 0


# --- body limits while streaming (row 6) -----------------------------------------------------------------------

@pytest.mark.parametrize("declare_length", [True, False])
def test_oversized_batch_is_cut_off_at_the_limit(app, declare_length):
    """Row 6: a 400 MB /search/batch body was read and parsed (on the event loop) before its 413."""
    body = Counter(400 * CHUNK)
    headers = {"Content-Type": "application/json"}
    if declare_length:
        headers["Content-Length"] = str(body.total)
    response = stream(app, "POST", "/search/batch", body, headers)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    limit = app.state.settings.max_batch_body_bytes
    assert body.read == 0 if declare_length else body.read <= limit + CHUNK


@pytest.mark.parametrize(("method", "path", "content_type"), [
    ("POST", "/search", "image/jpeg"),
    ("POST", "/search", "application/json"),
    ("POST", "/search", "multipart/form-data; boundary=b"),
    ("PUT", "/admin/items/x", "multipart/form-data; boundary=b"),
    ("POST", "/admin/reindex", "application/json"),
])
def test_every_route_has_a_body_limit_without_content_length(app, method, path, content_type):
    body = Counter(16 * CHUNK, MULTIPART_HEAD if content_type.startswith("multipart") else b"")
    response = stream(app, method, path, body, {"Content-Type": content_type, "X-API-Key": ADMIN_KEY})
    assert response.status_code == 413, response.text
    assert body.read <= 5 * CHUNK  # every limit here is at most 2 MiB * 4/3 + options, plus a chunk


def test_a_batch_within_the_limits_is_answered(client):
    queries = [{"image_base64": base64.b64encode(jpeg(draw_product(p, 6))).decode(), "k": 1} for p in (1, 5)]
    body = client.post("/search/batch", json={"queries": queries}).json()
    assert [r["results"][0]["product_id"] for r in body["responses"]] == ["p1", "p5"]


# --- list caps (row 8) -------------------------------------------------------------------------------------------

def test_300k_categories_are_a_422_in_every_form(client):
    """Row 8: 300,000 categories gave a 500 (too many SQL variables)."""
    many = [f"c{i}" for i in range(300_000)]
    image = jpeg(draw_product(0, 1))
    form = client.post("/search", files={"image": ("q.jpg", image, "image/jpeg")}, data={"category": ",".join(many)})
    query = client.post("/search", params={"category": ",".join(many[:5000])}, content=image,
                        headers={"Content-Type": "image/jpeg"})
    as_json = client.post("/search", json={"image_base64": base64.b64encode(image).decode(), "category": many})
    similar = client.get("/items/p1-v0/similar", params={"category": ",".join(many[:5000])})
    for response in (form, query, as_json, similar):
        assert response.status_code in (400, 413, 422), response.text
    assert "exceeded maximum size" in form.json()["error"]["message"]  # a form field over the options' room
    few = client.post("/search", files={"image": ("q.jpg", image, "image/jpeg")}, data={"category": ",".join(many[:5000])})
    assert few.json()["error"]["code"] == "too_many_categories"
    assert query.json()["error"]["code"] == "too_many_categories"
    for count in (5000, 20_000):  # the settings' cap, and the schema's hard cap
        as_json = client.post("/search", json={"image_base64": base64.b64encode(image).decode(),
                                               "category": many[:count]})
        assert as_json.status_code == 422, as_json.text


def test_over_long_query_string_is_414(client):
    response = client.get("/items/p1-v0/similar", params={"candidate_ids": "x" * (60 * 1024)})
    assert response.status_code == 414 and response.json()["error"]["code"] == "query_too_long"


def test_too_many_attributes_in_an_upsert_are_422(client):
    metadata = '{"product_id": "p", "attributes": {%s}}' % ",".join(f'"a{i}": "v"' for i in range(1000))
    response = client.put("/admin/items/new-one", headers={"X-API-Key": ADMIN_KEY},
                          files={"image": ("i.jpg", jpeg(draw_product(0, 0)), "image/jpeg")},
                          data={"metadata": metadata})
    assert response.status_code == 422, response.text
