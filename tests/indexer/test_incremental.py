import csv

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from indexer import GenerationError, build_generation
from indexer.incremental import apply_incremental
from tests.app.test_search_api import jpeg
from tests.conftest import draw_product, write_catalog


def _rewrite(catalog, change):
    with catalog.open() as handle:
        rows = list(csv.DictReader(handle))
    rows = change(rows)
    with catalog.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_incremental_add_update_delete_is_visible_to_the_running_service(tmp_path, embedder):
    root = tmp_path / "cat"
    catalog = write_catalog(root, products=4, images=2)
    data = tmp_path / "data"
    build_generation(catalog, data, embedder, workers=0, progress=False)
    settings = Settings(data_dir=data, reload_interval_s=0, device="cpu")
    with TestClient(create_app(settings)) as client:
        def top(p, v, **params):
            r = client.post("/search", params={"k": 10, "group": "false", **params}, content=jpeg(draw_product(p, v)),
                            headers={"Content-Type": "image/jpeg"})
            return [x["item_id"] for x in r.json()["results"]]

        assert "p1-v0" in top(1, 5)
        draw_product(5, 0).save(root / "images/new.jpg")
        draw_product(5, 1).save(root / "images/p0-v1.jpg")  # same item id, new picture

        def change(rows):
            rows = [r for r in rows if r["product_id"] != "p1"]  # delete product p1
            for r in rows:
                if r["item_id"] == "p2-v0":
                    r["title"] = "renamed oak lamp"
            rows.append({"item_id": "n5", "product_id": "p5", "title": "new lamp", "category": "chairs",
                         "image": "images/new.jpg", "brand": "acme"})
            return rows

        _rewrite(catalog, change)
        result = apply_incremental(catalog, data, embedder, workers=0, progress=False)
        assert (result.added, result.updated, result.deleted) == (1, 2, 2)
        assert result.unchanged == 4

        hits = top(5, 4)
        assert hits[0] in {"n5", "p0-v1"}  # both now show product 5's look
        assert {"n5", "p0-v1"} <= set(hits[:3])
        assert not {"p1-v0", "p1-v1"} & set(top(1, 5))
        assert client.get("/items/p2-v0").json()["title"] == "renamed oak lamp"
        assert client.get("/readyz").json()["items"] == 7
        kw = client.post("/search", params={"k": 5, "q": "renamed"}, content=jpeg(draw_product(0, 1)),
                         headers={"Content-Type": "image/jpeg"}).json()
        assert [r["item_id"] for r in kw["results"]] == ["p2-v0"]

        again = apply_incremental(catalog, data, embedder, workers=0, progress=False)
        assert (again.added, again.updated, again.deleted, again.unchanged) == (0, 0, 0, 7)


def test_incremental_needs_a_served_generation_of_the_same_model(tmp_path, embedder):
    catalog = write_catalog(tmp_path / "cat", products=1, images=1)
    with pytest.raises(GenerationError, match="full"):
        apply_incremental(catalog, tmp_path / "data", embedder, workers=0, progress=False)
