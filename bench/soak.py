"""Soak: a bounded mixed load against a real `lookalike serve` on 127.0.0.1 (issue 11).

Searches (multipart, raw, JSON), more-like-this, item reads, admin upserts and deletes run from several threads
for ``--seconds`` (at most 600), while one full reindex swaps the served generation and `lookalike rollback`
moves the pointer back and forth. Prints requests, errors (5xx or failed connections: must be 0), p50/p99 per
kind, and the server's RSS at the start (after warm-up) and the end.

    .venv/bin/python bench/soak.py --seconds 120 --threads 4
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import wait_ready  # noqa: E402

ADMIN_KEY = "soak-admin"


def photo(product: int, variant: int, size: int = 200) -> bytes:
    rng = random.Random(product * 1000 + variant)
    image = Image.new("RGB", (size, size), tuple(rng.randint(200, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    colour = tuple(random.Random(product).randint(0, 200) for _ in range(3))
    r = size * rng.uniform(0.25, 0.35)
    cx, cy = size / 2 + rng.uniform(-15, 15), size / 2 + rng.uniform(-15, 15)
    [draw.ellipse, draw.rectangle][product % 2]([cx - r, cy - r, cx + r, cy + r], fill=colour)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_catalog(folder: Path, products: int, images: int) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / "catalog.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "product_id", "title", "category", "image"])
        for p in range(products):
            for v in range(images):
                (folder / "images" / f"p{p}-v{v}.jpg").write_bytes(photo(p, v))
                writer.writerow([f"p{p}-v{v}", f"p{p}", f"product {p}", ["chairs", "tables"][p % 2],
                                 f"images/p{p}-v{v}.jpg"])
    return path


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.statuses: dict[int, int] = defaultdict(int)

    def call(self, kind: str, send) -> httpx.Response | None:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            response = send()
        except httpx.HTTPError as exc:
            with self.lock:
                self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            return None
        elapsed = time.perf_counter() - start
        with self.lock:
            self.latency[kind].append(elapsed)
            self.statuses[response.status_code] += 1
            if response.status_code >= 500:
                self.errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
        return response


def worker(url: str, seed: int, stop: threading.Event, products: int, rec: Recorder) -> None:
    rng = random.Random(seed)
    queries = [photo(p, 50 + p) for p in range(products)]
    with httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": ADMIN_KEY}) as c:
        while not stop.is_set():
            roll, image = rng.random(), rng.choice(queries)
            item = f"p{rng.randrange(products)}-v{rng.randrange(3)}"
            if roll < 0.35:
                rec.call("search", lambda: c.post("/search", files={"image": ("q.jpg", image, "image/jpeg")},
                                                  data={"k": "10"}))
            elif roll < 0.5:
                rec.call("search", lambda: c.post("/search?k=10&category=chairs", content=image,
                                                  headers={"Content-Type": "image/jpeg"}))
            elif roll < 0.6:
                rec.call("search", lambda: c.post("/search", json={"image_base64": base64.b64encode(image).decode(),
                                                                   "k": 5, "q": "product"}))
            elif roll < 0.72:
                rec.call("similar", lambda: c.get(f"/items/{item}/similar", params={"k": 10}))
            elif roll < 0.8:
                rec.call("get", lambda: c.get(f"/items/{item}"))
            elif roll < 0.93:
                meta = json.dumps({"product_id": f"soak-{seed}", "title": f"soak {rng.random():.5f}"})
                rec.call("upsert", lambda: c.put(f"/admin/items/soak-{seed}-{rng.randrange(20)}",
                                                 files={"image": ("u.jpg", image, "image/jpeg")},
                                                 data={"metadata": meta}))
            else:
                rec.call("delete", lambda: c.delete(f"/admin/items/soak-{seed}-{rng.randrange(20)}"))


def lookalike(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120, help="load duration (at most 600)")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--products", type=int, default=40)
    args = parser.parse_args()
    seconds = min(args.seconds, 600.0)

    work = Path(tempfile.mkdtemp(prefix="lookalike-soak-"))
    data_dir = work / "data"
    catalog = write_catalog(data_dir / "catalogs" / "main", args.products, 3)
    env = {**os.environ, "LOOKALIKE_DATA_DIR": str(data_dir), "LOOKALIKE_DEVICE": "cpu", "LOOKALIKE_WORKERS": "0",
           "LOOKALIKE_ADMIN_API_KEY": ADMIN_KEY, "LOOKALIKE_RELOAD_INTERVAL_S": "0.5",
           "LOOKALIKE_RETIRE_AFTER_S": "5"}
    server = None
    try:
        built = lookalike(env, "index", str(catalog), "--no-progress")
        assert built.returncode == 0, built.stderr[-2000:]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1", "--port",
                                   str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=open(work / "server.log", "wb"))  # noqa: SIM115
        try:
            wait_ready(url, server, timeout_s=300, describe=lambda: (work / "server.log").read_text()[-2000:])
        except RuntimeError as error:
            raise SystemExit(str(error)) from None
        warm = Recorder()
        worker_stop = threading.Event()
        warm_thread = threading.Thread(target=worker, args=(url, 0, worker_stop, args.products, warm))
        warm_thread.start()
        time.sleep(5)
        worker_stop.set()
        warm_thread.join()
        rss_start = rss_kb(server.pid)

        rec = Recorder()
        stop = threading.Event()
        threads = [threading.Thread(target=worker, args=(url, n + 1, stop, args.products, rec))
                   for n in range(args.threads)]
        started = time.monotonic()
        for t in threads:
            t.start()
        events = []
        admin = httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": ADMIN_KEY})
        time.sleep(seconds / 4)
        events.append(f"RSS before the reindex: {rss_kb(server.pid) / 1024:.0f} MB")
        r = admin.post("/admin/reindex", json={"catalog": str(catalog)})
        events.append(f"reindex: {r.status_code}")
        while admin.get("/admin/reindex").json()["state"] == "running" and time.monotonic() - started < seconds:
            time.sleep(0.5)
        events.append(f"reindex job: {admin.get('/admin/reindex').json()}")
        events.append(f"RSS after the reindex: {rss_kb(server.pid) / 1024:.0f} MB")
        swaps = 0
        while time.monotonic() - started < seconds * 0.9:
            before = admin.get("/readyz").json()["generation"]
            back = lookalike(env, "rollback")
            time.sleep(2)
            forward = lookalike(env, "rollback", "--to", before)
            time.sleep(2)
            swaps += 2
            events.append(f"rollback {back.returncode}, forward {forward.returncode}; "
                          f"RSS {rss_kb(server.pid) / 1024:.0f} MB")
            if back.returncode or forward.returncode:
                rec.errors.append(f"rollback: {back.stderr[-300:]} {forward.stderr[-300:]}")
            time.sleep(max(0.0, min(seconds / 6, seconds - (time.monotonic() - started))))
        remaining = seconds - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)
        stop.set()
        for t in threads:
            t.join(timeout=120)
        elapsed = time.monotonic() - started
        time.sleep(6)  # past the retire grace period: replaced generations are closed
        rss_end, peak = rss_kb(server.pid), rss_kb(server.pid, "VmHWM")
        ready = admin.get("/readyz").json()
        admin.close()

        total = sum(len(v) for v in rec.latency.values())
        print(f"soak: {elapsed:.0f} s, {args.threads} threads, {args.products * 3} catalog images, "
              f"machine: {os.cpu_count()} CPUs")
        print(f"requests: {total} answered  errors (5xx, failed connections or rollbacks): {len(rec.errors)}  "
              f"statuses: {dict(sorted(rec.statuses.items()))}")
        print("| kind | requests | p50 ms | p99 ms |\n|---|---|---|---|")
        for kind, values in sorted(rec.latency.items()):
            ms = np.array(values) * 1000
            print(f"| {kind} | {len(values)} | {np.percentile(ms, 50):.1f} | {np.percentile(ms, 99):.1f} |")
        print(f"generation swaps: 1 reindex + {swaps} rollbacks; served at the end: {ready['generation']}, "
              f"watcher {ready['watcher']}")
        print(f"server RSS: start {rss_start / 1024:.0f} MB, end {rss_end / 1024:.0f} MB "
              f"({(rss_end - rss_start) / 1024:+.0f} MB), peak {peak / 1024:.0f} MB")
        for event in events:
            print("  " + event)
        for error in rec.errors[:10]:
            print("  ERROR " + error)
        if rec.errors:
            raise SystemExit(1)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
