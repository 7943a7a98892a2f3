"""Searching a shopper's photo: the service finds the product, crops it and says which box it searched; a caller's
box; every object with objects=all; the whole photo when nothing is found or localisation is off.
The localiser is the tiny one trained on the fly (tests/conftest.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.localise import parse_box, regions
from models.localiser import Detection, looks_like_catalog_photo
from app.errors import ApiError
from app.main import create_app
from app.settings import Settings
from tests.conftest import busy_background, draw_product, product_cutout
from training.localiser import box_iou


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


def shopper_photo(product: int, at: tuple[int, int], size: int = 200, seed: int = 5,
                  second: tuple[int, tuple[int, int]] | None = None) -> tuple[Image.Image, tuple[float, ...]]:
    """Product ``product`` pasted at ``at`` onto a busy backdrop (and maybe a second one); its true box."""
    photo = busy_background(seed, (400, 300))
    boxes = []
    for p, (x, y) in [(product, at)] + ([second] if second else []):
        cut = product_cutout(p, 8).resize((size, size))
        photo.paste(cut, (x, y), cut)
        ys, xs = np.nonzero(np.asarray(cut.getchannel("A")) > 0)
        boxes.append((x + xs.min(), y + ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))
    return photo, boxes[0]


@pytest.fixture(scope="module")
def client(built_data_dir, tiny_localiser_path):
    settings = Settings(data_dir=built_data_dir, reload_interval_s=0, device="cpu",
                        localiser_weights=tiny_localiser_path)
    with TestClient(create_app(settings)) as c:
        yield c


def search(client, image: bytes, **form):
    return client.post("/search", files={"image": ("q.jpg", image, "image/jpeg")}, data=form)


def test_parse_box_in_pixels_and_fractions():
    assert parse_box("10,20,30,40", 400, 300) == (10, 20, 30, 40)
    assert parse_box("0.25,0.5,0.5,0.25", 400, 300) == (100, 150, 200, 75)
    assert parse_box("350,250,100,100", 400, 300) == (350, 250, 50, 50)  # clipped to the photo
    for bad in ("10,20,30", "500,10,20,20", "-5,0,10,10", "1,2,0,0"):
        with pytest.raises(ApiError):
            parse_box(bad, 400, 300)


def test_search_crops_the_detected_product(client):
    photo, truth = shopper_photo(3, (180, 90))
    body = search(client, jpeg(photo), k="3").json()
    box = body["box"]
    assert box["localised"] is True and box["source"] == "detected" and 0 < box["score"] <= 1
    assert box_iou((box["x"], box["y"], box["w"], box["h"]), truth) >= 0.5, (box, truth)
    assert "localise" in body["timings_ms"]
    whole = search(client, jpeg(photo), k="3", localise="false").json()
    assert whole["box"] == {"x": 0, "y": 0, "w": 400, "h": 300, "localised": False, "source": "whole", "score": None,
                           "matted": False}
    assert "localise" not in whole["timings_ms"]
    # the crop finds the product at least as well as the whole frame does
    rank = lambda b: [r["product_id"] for r in b["results"]].index("p3") if "p3" in [r["product_id"] for r in b["results"]] else 99  # noqa: E731
    assert rank(body) <= rank(whole)


def test_caller_box_in_pixels_or_fractions(client):
    photo, (x, y, w, h) = shopper_photo(5, (40, 60))
    body = search(client, jpeg(photo), k="3", box=f"{x},{y},{w},{h}").json()
    assert body["box"]["source"] == "caller" and body["box"]["localised"] is False
    assert (body["box"]["x"], body["box"]["w"]) == (x, w)
    assert body["results"][0]["product_id"] == "p5"
    frac = search(client, jpeg(photo), k="3", box=f"{x / 400},{y / 300},{w / 400},{h / 300}").json()
    assert abs(frac["box"]["x"] - x) <= 1 and abs(frac["box"]["h"] - h) <= 1
    bad = search(client, jpeg(photo), box="500,500,10,10")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_box"


def test_objects_all_returns_results_per_object(client):
    photo, _ = shopper_photo(1, (0, 40), size=190, second=(4, (210, 100)))
    body = search(client, jpeg(photo), k="2", objects="all").json()
    assert body["box"]["localised"] is True
    assert body["objects"], "two products: more than one object should be found"
    for obj in body["objects"]:
        assert obj["box"]["source"] == "detected" and len(obj["results"]) == 2
        alone = search(client, jpeg(photo), k="2", box=",".join(str(obj["box"][c]) for c in "xywh")).json()
        assert alone["results"][0]["product_id"] == obj["results"][0]["product_id"]  # the same region searched
    best_only = search(client, jpeg(photo), k="2").json()
    assert all(o["results"] is None for o in best_only["objects"])


def test_nothing_found_searches_the_whole_photo(built_data_dir, tiny_localiser_path):
    settings = Settings(data_dir=built_data_dir, reload_interval_s=0, device="cpu",
                        localiser_weights=tiny_localiser_path, localiser_min_score=0.999)
    flat = Image.new("RGB", (320, 240), (128, 128, 128))
    with TestClient(create_app(settings)) as strict:
        body = search(strict, jpeg(flat), k="3").json()
    assert body["box"] == {"x": 0, "y": 0, "w": 320, "h": 240, "localised": False, "source": "whole", "score": None,
                           "matted": False}
    assert body["objects"] == [] and len(body["results"]) == 3
    assert "localise" in body["timings_ms"]  # the localiser ran and found nothing


def test_a_catalog_style_photo_is_searched_whole(client):
    """A product on a plain backdrop is framed already: the whole photo is searched (source catalog_photo when
    objects were found), with the same results as localise=false."""
    plain = draw_product(3, 1, size=300)
    assert looks_like_catalog_photo(plain) and not looks_like_catalog_photo(shopper_photo(3, (180, 90))[0])
    body = search(client, jpeg(plain), k="3").json()
    assert body["box"]["localised"] is False and body["box"]["source"] in ("catalog_photo", "whole")
    assert body["box"]["w"] == 300 and body["box"]["h"] == 300
    whole = search(client, jpeg(plain), k="3", localise="false").json()
    assert [r["product_id"] for r in body["results"]] == [r["product_id"] for r in whole["results"]]


def test_regions_whole_first_keeps_every_detection_as_an_object():
    image = Image.new("RGB", (200, 100), (240, 240, 240))
    found = [Detection((10, 10, 50, 50), 0.9), Detection((100, 20, 40, 40), 0.5)]
    first, others = regions(image, None, found, None, 0.1, whole_first=True)
    assert first.box.source == "catalog_photo" and not first.box.localised and first.crop.size == (200, 100)
    assert [o.box.source for o in others] == ["detected", "detected"]
    first, _ = regions(image, None, found, "0,0,20,20", 0.1, whole_first=True)
    assert first.box.source == "caller"  # a caller's box always wins


def test_category_routing_shows_the_category_and_reranks(client, built_data_dir, tiny_localiser_path):
    """With CATEGORY_ROUTING the answer names the predicted category, and its results are the unrouted pool
    (4 x k) re-ranked by score + weight x p(result's category); the reported scores stay cosines."""
    weight = 0.5
    settings = Settings(data_dir=built_data_dir, reload_interval_s=0, device="cpu",
                        localiser_weights=tiny_localiser_path, category_routing=True, category_route_weight=weight)
    photo, _ = shopper_photo(3, (180, 90))
    pool = search(client, jpeg(photo), k="16").json()
    assert pool["category"] is None  # routing is off by default
    with TestClient(create_app(settings)) as routed_client:
        body = search(routed_client, jpeg(photo), k="4").json()
    predicted, p = body["category"]["name"], body["category"]["probability"]
    assert predicted in ("chairs", "tables") and 0.5 <= p <= 1  # two categories in the test catalog
    boosted = sorted(pool["results"], key=lambda r: -(r["score"] + weight * (p if r["category"] == predicted
                                                                             else 1 - p)))
    assert [r["item_id"] for r in body["results"]] == [r["item_id"] for r in boosted[:4]]
    assert [r["score"] for r in body["results"]] == [r["score"] for r in boosted[:4]]


def test_with_a_mask_head_the_object_is_matted_onto_white(client, built_data_dir, tiny_mask_localiser_path):
    """A localiser with a mask head and MATTE_OBJECTS: the searched object is cut out and put on white
    (box.matted); the caller's box is matted too; MATTE_OBJECTS=false gives the plain crop."""
    from models.localiser import Localiser
    from models.matting import matted_crop

    settings = Settings(data_dir=built_data_dir, reload_interval_s=0, device="cpu",
                        localiser_weights=tiny_mask_localiser_path, matte_objects=True)
    photo, truth = shopper_photo(3, (180, 90))
    with TestClient(create_app(settings)) as matting:
        body = search(matting, jpeg(photo), k="3").json()
        caller = search(matting, jpeg(photo), k="3", box=",".join(str(v) for v in truth)).json()
        flat = search(matting, jpeg(Image.new("RGB", (320, 240), (128, 128, 128))), k="3").json()
    assert body["box"]["source"] == "detected" and body["box"]["matted"] is True
    assert caller["box"]["source"] == "caller" and caller["box"]["matted"] is True
    assert flat["box"]["matted"] is False  # nothing found: the whole photo, as before
    # the service searched exactly the matted crop of its box
    decoded = Image.open(io.BytesIO(jpeg(photo))).convert("RGB")
    found = Localiser.load(tiny_mask_localiser_path).locate(decoded)
    first = found.detections[0].box
    assert box_iou(first, (body["box"]["x"], body["box"]["y"], body["box"]["w"], body["box"]["h"])) > 0.95
    crop = io.BytesIO()
    matted_crop(decoded, found.mask, first).save(crop, "PNG")
    with TestClient(create_app(settings)) as matting:
        direct = search(matting, crop.getvalue(), k="3", localise="false").json()
    assert [r["item_id"] for r in direct["results"]] == [r["item_id"] for r in body["results"]]
    assert [r["score"] for r in direct["results"]] == pytest.approx([r["score"] for r in body["results"]], abs=0.02)
    plain_settings = settings.model_copy(update={"matte_objects": False})
    with TestClient(create_app(plain_settings)) as plain:
        unmatted = search(plain, jpeg(photo), k="3").json()
    assert unmatted["box"]["matted"] is False
    assert unmatted["box"]["x"] == body["box"]["x"]  # the same box, searched as a plain crop
