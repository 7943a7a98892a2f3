"""Admin writes are serialised and atomic (issue 11, row 7): a model-based stress test.

Seeded threads send random upserts, deletes and searches at once to the real service (real SQLite, real model).
Every acknowledged write reports the delta version it committed as; replaying the acknowledged writes in
version order on a plain-dict model of the catalog must give exactly the catalog the service ends with, and
no request may get a 5xx. Before the fix the delta store shared one SQLite connection between threads and
allocated ids as MAX(id)+1: 500s (UNIQUE constraint failed, cannot rollback) and a lost item. Over HTTP the
model forward leaves few writes overlapping, so tests/indexer/test_delta_concurrency.py drives the store
itself at full contention (that one failed on the old store in every seed).
"""

from __future__ import annotations

import json
import random
import shutil
import threading

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.app.test_search_api import jpeg
from tests.conftest import draw_product

ADMIN = {"X-API-Key": "stress"}
THREADS = 6
OPS_PER_THREAD = 20
BASE_ITEMS = [f"p{p}-v{v}" for p in range(3) for v in range(3)]  # items of the built test catalog
NEW_ITEMS = [f"new-{i}" for i in range(4)]
UNIVERSE = BASE_ITEMS + NEW_ITEMS


@pytest.fixture
def client(built_data_dir, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(built_data_dir, data_dir)
    settings = Settings(data_dir=data_dir, reload_interval_s=0, device="cpu", admin_api_key=ADMIN["X-API-Key"])
    with TestClient(create_app(settings)) as c:
        yield c


def worker(client: TestClient, seed: int, images: list[bytes], acked: list[tuple], failures: list[str]) -> None:
    rng = random.Random(seed)
    for n in range(OPS_PER_THREAD):
        op = rng.choice(["upsert", "upsert", "delete", "delete", "search", "get"])
        item = rng.choice(UNIVERSE)
        if op == "upsert":
            meta = {"product_id": f"prod-{seed}-{n}", "title": f"title {seed} {n}", "category": "stress"}
            r = client.put(f"/admin/items/{item}", headers=ADMIN, data={"metadata": json.dumps(meta)},
                           files={"image": ("i.jpg", rng.choice(images), "image/jpeg")})
            if r.status_code == 200:
                acked.append((r.json()["version"], "upsert", item, meta["product_id"], meta["title"]))
        elif op == "delete":
            r = client.delete(f"/admin/items/{item}", headers=ADMIN)
            if r.status_code == 200:
                acked.append((r.json()["version"], "delete", item, None, None))
        elif op == "get":
            r = client.get(f"/items/{item}")
        else:
            r = client.post("/search?k=5", content=rng.choice(images), headers={"Content-Type": "image/jpeg"})
        if r.status_code >= 500 or r.status_code not in (200, 404):
            failures.append(f"{op} {item}: {r.status_code} {r.text[:200]}")


@pytest.mark.parametrize("seed", [11])
def test_concurrent_upserts_deletes_and_searches_equal_a_sequential_replay(client, seed):
    images = [jpeg(draw_product(p, 9)) for p in range(4)]
    model = {}
    for item in BASE_ITEMS:  # the starting catalog, as the service reports it
        body = client.get(f"/items/{item}").json()
        model[item] = (body["product_id"], body["title"])
    acked: list[tuple] = []
    failures: list[str] = []
    threads = [threading.Thread(target=worker, args=(client, seed * 100 + t, images, acked, failures))
               for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert failures == []

    versions = [a[0] for a in acked]
    assert len(set(versions)) == len(versions), "two acknowledged writes claim the same version"
    for _, op, item, product, title in sorted(acked):
        if op == "upsert":
            model[item] = (product, title)
        else:
            assert item in model, f"a delete of {item} was acknowledged while the model has no such item"
            del model[item]

    for item in UNIVERSE:
        r = client.get(f"/items/{item}")
        if item in model:
            assert r.status_code == 200, f"{item} lost: {r.text}"
            assert (r.json()["product_id"], r.json()["title"]) == model[item]
            similar = client.get(f"/items/{item}/similar", params={"k": 1, "group": "false", "same_product": "true"})
            assert similar.status_code == 200
        else:
            assert r.status_code == 404, f"{item} should be gone: {r.text}"
    assert client.get("/readyz").json()["items"] == 24 - len(BASE_ITEMS) + len(model)
    stress = client.post("/search", params={"k": 50, "category": "stress", "group": "false"}, content=images[0],
                         headers={"Content-Type": "image/jpeg"}).json()
    assert sorted(h["item_id"] for h in stress["results"]) == sorted(i for i, (p, _) in model.items()
                                                                     if p.startswith("prod-"))
