"""Background work cannot die silently (issue 11, rows 9, 10 and 12).

The reload watcher survives bad generations (invalid manifest, corrupt vectors, corrupt SQLite, a pointer
naming no generation), logs and counts each in /metrics, keeps serving the last good one and still follows
later good ones and rollbacks; readyz reports a watcher that has stopped. A reindex job that raises anything
ends as "failed" with its reason. Replaced generations are closed after their grace period.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from indexer import current_generation, publish
from indexer.generations import generations_dir
from tests.app.test_search_api import jpeg
from tests.conftest import draw_product, write_catalog

ADMIN = {"X-API-Key": "bg"}


def wait_for(condition, timeout: float = 30.0, step: float = 0.05):
    """Poll ``condition`` until it returns something truthy (bounded in time); returns the last value."""
    deadline = time.monotonic() + timeout
    value = condition()
    while not value and time.monotonic() < deadline:
        time.sleep(step)
        value = condition()
    return value


def copy_generation(data_dir: Path, source: str, number: int) -> str:
    name = f"gen-{number:06d}"
    shutil.copytree(generations_dir(data_dir) / source, generations_dir(data_dir) / name,
                    ignore=shutil.ignore_patterns("delta.db*"))
    return name


def vectors_file(generation: Path) -> Path:
    """The file the service reads a generation's vectors from (the vector store's flat codes)."""
    store = generation / "store" / "flat.faiss"
    return store if store.is_file() else generation / "vectors.npy"


def reload_failures(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("lookalike_reload_failures_total "):
            return float(line.split()[1])
    return 0.0


@pytest.fixture
def data_dir(built_data_dir, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(built_data_dir, data, ignore=shutil.ignore_patterns("delta.db*", "LOCK*"))
    return data


def test_watcher_survives_bad_generations_and_keeps_following_the_pointer(data_dir, caplog):
    """Row 9: after an invalid manifest the watcher died without a log line and hot swap stopped for good."""
    good = current_generation(data_dir)
    settings = Settings(data_dir=data_dir, reload_interval_s=0.05, device="cpu")
    with TestClient(create_app(settings)) as client:
        bad = {}
        bad["manifest"] = copy_generation(data_dir, good, 2)
        (generations_dir(data_dir) / bad["manifest"] / "manifest.json").write_text('{"generation": "half"')
        bad["vectors"] = copy_generation(data_dir, good, 3)
        vectors_file(generations_dir(data_dir) / bad["vectors"]).write_bytes(b"\x93NUMPY garbage")
        bad["sqlite"] = copy_generation(data_dir, good, 4)
        (generations_dir(data_dir) / bad["sqlite"] / "catalog.db").write_bytes(b"SQLite format 3\x00" + b"\x07" * 4096)
        for n, (kind, name) in enumerate(bad.items(), start=1):
            publish(data_dir, name)
            assert wait_for(lambda n=n: reload_failures(client) >= n), f"the {kind} failure was not counted"
            ready = client.get("/readyz").json()
            assert ready["status"] == "ready" and ready["generation"] == good and ready["watcher"] == "running"
            assert name in ready["last_reload_error"] or kind in ready["last_reload_error"]
            r = client.post("/search?k=1", content=jpeg(draw_product(3, 4)), headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200 and r.json()["generation"] == good
        (data_dir / "CURRENT").write_text("../../etc\n")  # a pointer edited by hand
        assert wait_for(lambda: reload_failures(client) >= 4)
        assert any("not switching" in r.message for r in caplog.records)

        fresh = copy_generation(data_dir, good, 5)  # a good generation is still followed ...
        publish(data_dir, fresh)
        assert wait_for(lambda: client.get("/readyz").json()["generation"] == fresh)
        publish(data_dir, good)  # ... and so is a rollback
        assert wait_for(lambda: client.get("/readyz").json()["generation"] == good)
        assert client.get("/readyz").json()["last_reload_error"] is not None  # the last refusal stays visible


def test_readyz_reports_a_stopped_watcher(data_dir):
    with TestClient(create_app(Settings(data_dir=data_dir, reload_interval_s=0.05, device="cpu"))) as client:
        assert client.get("/readyz").json()["watcher"] == "running"
        task = client.app.state.watcher._task
        task.get_loop().call_soon_threadsafe(task.cancel)
        response = wait_for(lambda: (r := client.get("/readyz")).status_code == 503 and r)
        assert response and response.json()["status"] == "watcher_stopped"
        assert response.json()["watcher"] == "stopped"


def test_reindex_job_that_raises_anything_is_failed_with_its_reason(data_dir, monkeypatch):
    """Row 10: an exception outside the caught tuple left the job "running" and every later reindex got 409."""
    import indexer.build

    def broken(*args, **kwargs):
        raise LookupError("injected fault in the catalog store")

    catalog = write_catalog(data_dir / "catalogs" / "c", products=2, images=1)
    settings = Settings(data_dir=data_dir, reload_interval_s=0, device="cpu", admin_api_key=ADMIN["X-API-Key"],
                        workers=0)
    with TestClient(create_app(settings)) as client:
        monkeypatch.setattr(indexer.build, "create_store", broken)
        assert client.post("/admin/reindex", json={"catalog": str(catalog)}, headers=ADMIN).status_code == 202
        job = wait_for(lambda: (j := client.get("/admin/reindex", headers=ADMIN).json())["state"] != "running" and j)
        assert job and job["state"] == "failed"
        assert job["message"] == "LookupError: injected fault in the catalog store"
        monkeypatch.undo()
        assert client.post("/admin/reindex", json={"catalog": str(catalog)}, headers=ADMIN).status_code == 202
        job = wait_for(lambda: (j := client.get("/admin/reindex", headers=ADMIN).json())["state"] != "running" and j,
                       timeout=120)
        assert job and job["state"] == "done", job
        assert client.get("/readyz").json()["items"] == 2


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_replaced_generations_are_closed_after_their_grace_period(data_dir):
    """Row 12: ten reloads left every old generation's SQLite handles open (18 -> 48 descriptors)."""
    first = current_generation(data_dir)
    second = copy_generation(data_dir, first, 2)
    settings = Settings(data_dir=data_dir, reload_interval_s=0.02, retire_after_s=0, device="cpu")
    with TestClient(create_app(settings)) as client:
        publish(data_dir, second)
        assert wait_for(lambda: client.get("/readyz").json()["generation"] == second)
        publish(data_dir, first)
        assert wait_for(lambda: client.get("/readyz").json()["generation"] == first)
        time.sleep(0.2)  # a few watcher ticks: the retired generation is closed
        before = open_fds()
        for n in range(10):
            name = second if n % 2 == 0 else first
            publish(data_dir, name)
            assert wait_for(lambda name=name: client.get("/readyz").json()["generation"] == name)
        assert wait_for(lambda: open_fds() <= before + 2, timeout=10), f"{before} -> {open_fds()} descriptors"
        r = client.post("/search?k=1", content=jpeg(draw_product(3, 4)), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200
