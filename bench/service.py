"""Service latency and throughput over loopback: concurrent photo searches, and keyword-then-image at scale.

For each runtime given (``--runtimes``; PyTorch and OpenVINO side by side by default):
1. The model's floor: one forward of one preprocessed image (``Embedder.embed_tensors``), in this process, and
   the query localiser's cost beside it: one ``detect`` on a photo decoded as the service decodes it for
   localisation (the network in the same runtime, FCOS decoding and NMS in PyTorch), as a share of one forward.
2. Micro-batching, in process: 16 concurrent callers embedding through ``app.batching.MicroBatcher`` against
   one unbatched forward per caller.
3. ``POST /search`` from 1, 4 and 16 concurrent clients (httpx) against ``lookalike``'s app under uvicorn in a
   subprocess on 127.0.0.1 (``LOOKALIKE_RUNTIME`` set to that runtime): p50/p95/p99 latency, QPS, p50 over
   the runtime's forward plus the server's search time, and the server's own stage timings (decode, localise,
   embed, search); one more row per runtime searches whole photos (``localise=false``) from one client.
4. Keyword-then-image with 100, 10k and 100k candidates (``q`` keyword hits and explicit ``candidate_ids``) on a
   synthetic generation of 110k catalog rows made of a few dozen distinct drawn images (byte-identical files are
   embedded once, so it indexes in a minute).

The data dir (default ``data/``, the demo index after ``make run``) is only read; without a published generation
there, a small synthetic catalog is built in a temporary folder. Every request goes to 127.0.0.1 and the number of
requests is bounded.

    .venv/bin/python bench/service.py [--data-dir data] [--requests 64] [--keyword-requests 10] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import platform
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.batching import MicroBatcher  # noqa: E402
from app.localise import PACKAGED_WEIGHTS  # noqa: E402
from app.serving import embedder_for  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench._common import timed, wait_ready  # noqa: E402
from indexer import build_generation, current_generation, read_manifest  # noqa: E402
from indexer.generations import generations_dir  # noqa: E402
from models import Embedder, RuntimeOptions, load_image  # noqa: E402
from models.localiser_runtime import RuntimeLocaliser  # noqa: E402

COLOURS = [(200, 30, 30), (30, 160, 40), (30, 60, 200), (220, 180, 20), (150, 40, 170), (20, 170, 170), (90, 90, 90)]


def draw(product: int, variant: int, size: int = 256) -> Image.Image:
    """A photo of a synthetic product: a coloured polygon whose shape and colour depend on the product."""
    rng = random.Random(product * 1000 + variant)
    image = Image.new("RGB", (size, size), tuple(rng.randint(215, 255) for _ in range(3)))
    sides = 3 + product % 6
    cx, cy, r = size / 2 + rng.uniform(-15, 15), size / 2 + rng.uniform(-15, 15), size * rng.uniform(0.25, 0.38)
    phase = rng.uniform(0, 6.28)
    points = [(cx + r * np.cos(phase + i * 6.283 / sides), cy + r * np.sin(phase + i * 6.283 / sides))
              for i in range(sides)]
    ImageDraw.Draw(image).polygon(points, fill=COLOURS[product % len(COLOURS)])
    return image


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_synthetic_catalog(root: Path, rows: int, distinct: int, tokens: dict[str, int]) -> Path:
    """``rows`` catalog rows cycling over ``distinct`` image files; row i's title has token t when i < tokens[t]."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for j in range(distinct):
        draw(j // 3, j % 3).save(root / "images" / f"d{j}.jpg", quality=90)
    path = root / "catalog.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "product_id", "title", "category", "image"])
        for i in range(rows):
            words = " ".join(t for t, n in tokens.items() if i < n)
            writer.writerow([f"i{i}", f"p{i // 3}", f"item {words}", f"c{i % 10}", f"images/d{i % distinct}.jpg"])
    return path


def ensure_generation(data_dir: Path, catalog: Path, embedder: Embedder) -> None:
    if current_generation(data_dir) is None:
        build_generation(catalog, data_dir, embedder, workers=0, progress=True)


def machine_line() -> str:
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, Python "
            f"{platform.python_version()}, torch {torch.__version__}; a shared machine: other jobs may load it")


def percentiles(values: list[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(np.asarray(values), [50, 95, 99])
    return float(p50), float(p95), float(p99)


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [headers] + [[f"{c:.1f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- in process


def forward_floor(embedder: Embedder, image: Image.Image, repeats: int = 20) -> tuple[float, float, float]:
    """(min, median, CPU) seconds of one forward of one preprocessed image: what no request can beat.

    On a shared machine the median moves with other jobs' load; the minimum is the steadier floor.
    """
    tensor = embedder.pixels(image)[None]
    for _ in range(3):
        embedder.embed_tensors(tensor)
    times, cpu = timed(embedder.embed_tensors, tensor, rounds=repeats)
    return min(times), statistics.median(times), cpu


async def _batching(embedder: Embedder, tensors: list[torch.Tensor], callers: int) -> list[list[object]]:
    async def run(embed) -> tuple[float, int]:  # type: ignore[no-untyped-def]
        queue = list(tensors)

        async def caller() -> None:
            while queue:
                await embed(queue.pop())

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return time.perf_counter() - start, len(tensors)

    calls = {"n": 0}

    async def unbatched(t: torch.Tensor) -> np.ndarray:
        calls["n"] += 1
        return (await asyncio.to_thread(embedder.embed_tensors, t[None]))[0]

    rows: list[list[object]] = []
    start = time.perf_counter()
    for t in tensors:
        embedder.embed_tensors(t[None])
    rows.append(["sequential, one caller", 1, len(tensors), 1.0, len(tensors) / (time.perf_counter() - start)])
    wall, n = await run(unbatched)
    rows.append(["one forward per caller (threads)", callers, calls["n"], 1.0, n / wall])
    for window_ms, max_batch in ((2.0, 4), (2.0, 16), (5.0, 16)):
        batcher = MicroBatcher(embedder.embed_tensors, window_ms=window_ms, max_batch=max_batch)
        wall, n = await run(batcher.embed)
        await batcher.aclose()
        sizes = batcher.stats.sizes
        rows.append([f"MicroBatcher {window_ms:g} ms, max {max_batch}", callers, batcher.stats.forwards,
                     sum(sizes) / len(sizes), n / wall])
    return rows


# ---------------------------------------------------------------------------------------------- over HTTP


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) the process ``pid`` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measured_load(url: str, pid: int, photos: list[bytes], clients: int, requests: int,
                  form: dict[str, str] | None = None) -> tuple[list[float], float, list[dict], float, float]:
    """:func:`load`, plus the server's and this client's CPU ms per request (steadier than wall time when other
    jobs load the machine: CPU time is what the work costs, wall time is also what it waited)."""
    server, client = process_cpu_s(pid), own_cpu_s()
    latencies, wall, bodies = asyncio.run(load(url, photos, clients, requests, form, warmup=0))
    return (latencies, wall, bodies, 1000 * (process_cpu_s(pid) - server) / len(latencies),
            1000 * (own_cpu_s() - client) / len(latencies))


@contextmanager
def serve(data_dir: Path, extra_env: dict[str, str | None] | None = None) -> Iterator[str]:
    """The app under uvicorn in a subprocess, on a loopback socket this process bound (no port race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    env = {**os.environ, "LOOKALIKE_DATA_DIR": str(data_dir), "LOOKALIKE_RELOAD_INTERVAL_S": "0",
           "LOOKALIKE_DEVICE": "cpu", "LOOKALIKE_MAX_UPLOAD_BYTES": str(20 * 1024 * 1024)}
    for key, value in (extra_env or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--fd",
                             str(sock.fileno()), "--log-level", "warning", "--no-access-log"],
                            env=env, pass_fds=[sock.fileno()])
    url = f"http://127.0.0.1:{port}"
    serve.pid = proc.pid  # type: ignore[attr-defined]  # for process_cpu_s while it serves
    try:
        wait_ready(url, proc, timeout_s=300)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        sock.close()


async def load(url: str, photos: list[bytes], clients: int, requests: int, form: dict[str, str] | None = None,
               warmup: int = 2) -> tuple[list[float], float, list[dict]]:
    """``requests`` searches from ``clients`` concurrent clients -> latencies (s), wall (s), response bodies."""
    latencies: list[float] = []
    bodies: list[dict] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        async def one(i: int) -> None:
            photo = photos[i % len(photos)]
            start = time.perf_counter()
            response = await client.post("/search", files={"image": ("q.jpg", photo, "image/jpeg")},
                                         data={"k": "10", **(form or {})})
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                raise RuntimeError(f"search answered {response.status_code}: {response.text[:300]}")
            latencies.append(elapsed)
            bodies.append(response.json())

        for i in range(warmup):
            await one(i)
        latencies.clear()
        bodies.clear()
        counter = iter(range(requests))

        async def worker() -> None:
            for i in counter:
                await one(i)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    return latencies, wall, bodies


def http_row(label: str, clients: int, latencies: list[float], wall: float, bodies: list[dict],
             floor_median: float) -> list[object]:
    """One row of the HTTP table: client-side percentiles, QPS, ratio to forward + search, server stage medians."""
    p50, p95, p99 = percentiles(latencies)
    search_ms = server_ms(bodies, "search")
    total = statistics.median([sum(b["timings_ms"].values()) for b in bodies])
    return [label, clients, len(latencies), p50 * 1000, p95 * 1000, p99 * 1000, len(latencies) / wall,
            p50 * 1000 / (floor_median * 1000 + search_ms), server_ms(bodies, "decode"), server_ms(bodies, "localise"),
            server_ms(bodies, "embed"), search_ms, total]


def localise_cost(localiser: RuntimeLocaliser, photos: list[bytes], draft: int, forward_s: float,
                  forward_cpu_s: float, repeats: int = 20) -> list[object]:
    """[localise ms, share of one forward, network-only ms, localise CPU ms, CPU share of one forward's CPU]:
    ``detect`` on each photo decoded as the service does (median over photos of the median of ``repeats``)."""
    images = [load_image(p, draft_size=draft, short_side=draft) for p in photos[:4]]
    per_photo, net_only, cpu = [], [], 0.0
    for image in images:
        localiser.detect(image)
        times, cpu_each_call = timed(localiser.detect, image, rounds=repeats)
        cpu += cpu_each_call * repeats
        per_photo.append(statistics.median(times))
        tensor = localiser.input_tensor(image)
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(repeats):
                localiser.network_outputs(tensor)
        net_only.append((time.perf_counter() - start) / repeats)
    median, cpu_each = statistics.median(per_photo), cpu / (len(images) * repeats)
    return [median * 1000, f"{median / forward_s:.2f}x", statistics.median(net_only) * 1000, cpu_each * 1000,
            f"{cpu_each / forward_cpu_s:.2f}x"]


def server_ms(bodies: list[dict], stage: str) -> float:
    values = [b["timings_ms"].get(stage, 0.0) for b in bodies]
    return statistics.median(values) if values else 0.0


def query_photos(data_dir: Path, demo_dir: Path, count: int = 16) -> list[bytes]:
    queries = sorted(demo_dir.glob("queries/*/query-0.jpg"))
    if queries and current_generation(data_dir) and read_manifest(
            generations_dir(data_dir) / current_generation(data_dir)).catalog.startswith(str(demo_dir.resolve())):
        return [p.read_bytes() for p in queries[:: max(1, len(queries) // count)][:count]]
    return [jpeg(draw(p, 9)) for p in range(count)]


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="a data dir with a published generation")
    parser.add_argument("--demo-dir", type=Path, default=Path("data/demo"), help="where demo query photos are")
    parser.add_argument("--requests", type=int, default=64, help="timed searches per concurrency level")
    parser.add_argument("--clients", type=str, default="1,4,16")
    parser.add_argument("--keyword-requests", type=int, default=10, help="timed searches per candidate-set size")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep synthetic catalogs and generations here and reuse them (default: a temp dir)")
    parser.add_argument("--skip-keyword", action="store_true")
    parser.add_argument("--runtimes", default="torch,openvino,openvino:1",
                        help="runtimes to compare side by side; runtime:N sets its threads per forward")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="intra-op threads, here and in the server (LOOKALIKE_TORCH_THREADS); default: torch's")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
        os.environ["LOOKALIKE_TORCH_THREADS"] = str(args.torch_threads)
    clients = [int(c) for c in args.clients.split(",")]

    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"machine: {machine_line()}")

        data_dir = args.data_dir
        if current_generation(data_dir) is None:
            data_dir = work / "small-data"
            print(f"no published generation under {args.data_dir}; using a synthetic catalog in {data_dir}")
            catalog = write_synthetic_catalog(work / "small-catalog", rows=120, distinct=120, tokens={})
            from models import ModelConfig, build_model
            ensure_generation(data_dir, catalog, Embedder(build_model(ModelConfig()), device="cpu"))
        gen = current_generation(data_dir)
        assert gen is not None
        manifest = read_manifest(generations_dir(data_dir) / gen)
        print(f"generation {gen} of {data_dir}: {manifest.count} images, {manifest.index_factory}, "
              f"model {manifest.model_id} ({manifest.embedding_config.get('image_size')} px)")

        photos = query_photos(data_dir, args.demo_dir)
        http_rows, batch_rows, localise_rows, floors = [], [], [], {}
        for spec in args.runtimes.split(","):
            runtime, _, threads = spec.partition(":")
            env = {"LOOKALIKE_RUNTIME": runtime, "LOOKALIKE_RUNTIME_THREADS": threads or None}
            options = RuntimeOptions(runtime=runtime, threads=int(threads) if threads else None,
                                     cache_dir=data_dir / "runtime-cache")
            embedder = embedder_for(manifest, "cpu", options)
            label = f"{embedder.runtime_name} {embedder.precision}" + (f" ({threads} thread)" if threads else "")
            torch.set_num_threads(int(os.environ.get("LOOKALIKE_TORCH_THREADS", "1")))  # as the server sets it
            floor, floor_median, floor_cpu = forward_floor(embedder, embedder.load(photos[0]))
            floors[label] = (floor, floor_median, floor_cpu)
            tensors = [embedder.pixels(embedder.load(photos[i % len(photos)])) for i in range(64)]
            if PACKAGED_WEIGHTS.exists():
                localise_rows.append([label, floor_median * 1000,
                                      *localise_cost(RuntimeLocaliser.load_with(PACKAGED_WEIGHTS, options), photos,
                                                     embedder.image_size * Settings().localise_draft_factor,
                                                     floor_median, floor_cpu)])
            batch_rows += [[label, *row] for row in asyncio.run(_batching(embedder, tensors, callers=16))]
            del embedder
            with serve(data_dir, env) as url:
                asyncio.run(load(url, photos, 1, 4))  # warm-up: the first requests pay for lazy set-up
                pid = serve.pid  # type: ignore[attr-defined]
                for c in clients:
                    *run, server_cpu, client_cpu = measured_load(url, pid, photos, c, args.requests)
                    http_rows.append([*http_row(label, c, *run, floor_median), server_cpu, client_cpu])
                *run, server_cpu, client_cpu = measured_load(url, pid, photos, 1, args.requests, {"localise": "false"})
                http_rows.append([*http_row(f"{label}, localise=false", 1, *run, floor_median), server_cpu,
                                  client_cpu])
        print("\nforward floor: one preprocessed image, batch 1, the server's threads (20 runs)")
        print(table(["runtime", "min ms", "median ms", "CPU ms"],
                    [[k, v[0] * 1000, v[1] * 1000, v[2] * 1000] for k, v in floors.items()]))
        print("\nlocalisation cost: one detect on a query photo decoded at the service's localisation size "
              "(median of 20 per photo, median over photos) against one embedding forward (median)")
        print(table(["runtime", "forward ms", "localise ms", "of a forward", "localise, net only ms",
                     "CPU ms", "CPU of a forward's"], localise_rows))
        print("\nmicro-batching in process: 64 images from 16 concurrent callers")
        print(table(["runtime", "strategy", "callers", "forwards", "mean batch", "images/s"], batch_rows))
        print(f"\nPOST /search (k=10, photos {len(photos)} distinct) over 127.0.0.1, {manifest.count} images; "
              "ratio = p50 / (median forward + server search)")
        print(table(["runtime", "clients", "requests", "p50 ms", "p95 ms", "p99 ms", "QPS", "ratio",
                     "srv decode ms", "srv localise ms", "srv embed ms", "srv search ms", "srv total ms",
                     "srv CPU ms/req", "client CPU ms/req"], http_rows))

        if args.skip_keyword:
            return
        # Keyword tokens that are not prefixes of one another (the last word of q is prefix-matched).
        sizes = {"kwa": 100, "kwb": 10_000, "kwc": 100_000}
        large_dir = work / "large-data"
        catalog = work / "large-catalog" / "catalog.csv"
        if current_generation(large_dir) is None:
            print("\nbuilding the 110k-row synthetic generation (60 distinct images) ...")
            start = time.perf_counter()
            catalog = write_synthetic_catalog(work / "large-catalog", rows=110_000, distinct=60, tokens=sizes)
            ensure_generation(large_dir, catalog, embedder_for(manifest, "cpu", RuntimeOptions(runtime="auto")))
            print(f"built in {time.perf_counter() - start:.0f} s")
        large = read_manifest(generations_dir(large_dir) / current_generation(large_dir))
        rows = []
        with serve(large_dir) as url:
            for token, n in sizes.items():
                for mode, form in (("q", {"q": token}),
                                   ("candidate_ids", {"candidate_ids": ",".join(f"i{i}" for i in range(n))})):
                    latencies, wall, bodies = asyncio.run(load(url, photos, 1, args.keyword_requests, form))
                    p50, p95, _ = percentiles(latencies)
                    plan = {b["plan"] for b in bodies}
                    assert {b["candidates"] for b in bodies} == {n}, "the candidate set is not the intended size"
                    rows.append([n, mode, "/".join(sorted(plan)), p50 * 1000, p95 * 1000, server_ms(bodies, "embed"),
                                 server_ms(bodies, "search"), len(form[mode]) // 1024])
            latencies, wall, bodies = asyncio.run(load(url, photos, 1, args.keyword_requests))
            p50, p95, _ = percentiles(latencies)
            rows.append([large.count, "none", bodies[0]["plan"], p50 * 1000, p95 * 1000, server_ms(bodies, "embed"),
                         server_ms(bodies, "search"), 0])
        print(f"\nkeyword-then-image, 1 client, {args.keyword_requests} requests each, on {large.count} catalog rows "
              f"({large.unique_images} distinct images, {large.index_factory})")
        print(table(["candidates", "given as", "plan", "p50 ms", "p95 ms", "srv embed ms", "srv search ms",
                     "form KiB"], rows))


if __name__ == "__main__":
    main()
