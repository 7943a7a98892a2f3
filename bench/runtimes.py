"""Inference runtimes side by side on the demo catalog: latency, throughput, agreement with PyTorch fp32, R@1.

For each runtime/precision (PyTorch fp32 first, as the reference): one image at batch 1 on one thread (a query),
batches of 32 on every core (extraction), the mean and worst cosine of its gallery vectors against PyTorch
fp32's, and product Recall@1 with held-out renders as queries (see bench/demo_quality.py). Runs interleave the
timing rounds of all runtimes, so load from other jobs falls on each alike.

    .venv/bin/python bench/runtimes.py --limit 300 [--runtimes torch:fp32,onnxruntime:fp32,openvino:fp32,openvino:bf16,openvino:int8]

With ``--record``, the served generation's manifest (data/) gets the R@1 measured for its own runtime and precision
(``demo_recall_at_1``), when it indexes this demo catalog with the same model.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import timed  # noqa: E402
from bench.demo_quality import product_recall  # noqa: E402
from indexer import current_generation, read_catalog, read_manifest  # noqa: E402
from indexer.extract import extract_embeddings  # noqa: E402
from indexer.generations import MANIFEST, generations_dir  # noqa: E402
from models.atomic import write_json_atomic  # noqa: E402
from models import Embedder, ModelConfig, RuntimeOptions, RuntimeUnavailable, build_model  # noqa: E402
from models.agreement import agreement  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", type=Path, default=Path("data/demo"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--limit", type=int, default=300, help="first N products (0: all)")
    parser.add_argument("--runtimes", default="torch:fp32,onnxruntime:fp32,openvino:fp32,openvino:bf16,openvino:int8")
    parser.add_argument("--rounds", type=int, default=10, help="timing rounds per runtime (interleaved)")
    parser.add_argument("--calibration", type=int, default=300, help="int8: calibration images from the gallery")
    parser.add_argument("--cache-dir", type=Path, default=Path("data/runtime-cache"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--record", action="store_true", help="write R@1 into the served generation's manifest")
    args = parser.parse_args()

    rows = read_catalog(args.demo_dir / "catalog.csv")
    with (args.demo_dir / "queries.csv").open() as handle:
        queries = [(args.demo_dir / r["query_image"], r["product_id"]) for r in csv.DictReader(handle)]
    if args.limit:
        keep = set(list(dict.fromkeys(r.product_id for r in rows))[: args.limit])
        rows = [r for r in rows if r.product_id in keep]
        queries = [q for q in queries if q[1] in keep]
    cores = os.cpu_count() or 1
    print(f"# {platform.machine()} {platform.processor() or ''}, {cores} cores (shared, loaded machine); gallery "
          f"{len(rows)} images of {len({r.product_id for r in rows})} products, {len(queries)} queries")

    model = build_model(ModelConfig())
    calibration = tuple(dict.fromkeys(r.image for r in rows))[: args.calibration]
    embedders: dict[str, tuple[Embedder, Embedder]] = {}  # label -> (1 thread, all cores)
    for spec in args.runtimes.split(","):
        runtime, _, precision = spec.partition(":")
        try:
            pair = tuple(Embedder(model, device="cpu", options=RuntimeOptions(
                runtime=runtime, precision=precision or "auto", threads=threads, cache_dir=args.cache_dir,
                calibration_images=calibration if precision == "int8" else ())) for threads in (1, cores))
        except RuntimeUnavailable as exc:
            print(f"# {spec}: skipped ({exc})")
            continue
        embedders[f"{pair[0].runtime_name} {pair[0].precision}"] = pair  # type: ignore[assignment]

    size = model.config.image_size
    # uint8 pixels, as extraction workers and the service hand them over (the exported graphs normalise inside)
    one, many = (torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8) for n in (1, 32))
    latency: dict[str, list[float]] = {k: [] for k in embedders}
    rate: dict[str, list[float]] = {k: [] for k in embedders}
    for label, (single, full) in embedders.items():  # warm-up
        single.embed_tensors(one)
        full.embed_tensors(many)
    for _ in range(args.rounds):  # interleaved rounds: other jobs' load falls on every runtime alike
        for label, (single, full) in embedders.items():
            torch.set_num_threads(1)
            latency[label] += timed(single.embed_tensors, one, rounds=3)[0]
            torch.set_num_threads(cores)
            rate[label] += [len(many) / t for t in timed(full.embed_tensors, many, rounds=1)[0]]

    torch.set_num_threads(cores)
    reference_gallery = None
    results = []
    for label, (_, full) in embedders.items():
        gallery = extract_embeddings([r.image for r in rows], full, workers=args.workers, progress=False)
        query = extract_embeddings([q[0] for q in queries], full, workers=args.workers, progress=False)
        if reference_gallery is None:
            reference_gallery = gallery
        found = agreement(gallery, reference_gallery)
        recall = product_recall(query, [q[1] for q in queries], gallery, [r.product_id for r in rows], (1,))[1]
        results.append((label, statistics.median(latency[label]) * 1000, statistics.median(rate[label]),
                        found.mean, found.min, recall))
        print(f"# {label}: done", flush=True)

    print(f"\n| runtime | batch 1, 1 thread (ms, median) | batch 32, {cores} threads (img/s, median) | "
          f"cosine to {results[0][0]} (mean / min) | R@1 |")
    print("|---|---|---|---|---|")
    for label, ms, per_s, mean, worst, recall in results:
        print(f"| {label} | {ms:.1f} | {per_s:.0f} | {mean:.4f} / {worst:.4f} | {100 * recall:.1f} |")

    if args.record:
        record(args.data_dir, args.demo_dir, embedders, {r[0]: r[5] for r in results}, args.limit)


def record(data_dir: Path, demo_dir: Path, embedders: dict[str, tuple[Embedder, Embedder]],
           recall: dict[str, float], limit: int) -> None:
    """Write the served generation's own runtime's R@1 into its manifest (full demo catalog only)."""
    name = current_generation(data_dir)
    if name is None or limit:
        print("# --record: needs a served generation and the whole demo catalog (--limit 0)")
        return
    gen_dir = generations_dir(data_dir) / name
    manifest = read_manifest(gen_dir)
    label = f"{manifest.runtime} {manifest.precision}"
    if not manifest.catalog.startswith(str(demo_dir.resolve())) or label not in recall or \
            manifest.model_id != embedders[label][0].model_id:
        print(f"# --record: {name} is not the demo catalog on a model/runtime measured here ({label})")
        return
    write_json_atomic(gen_dir / MANIFEST, {**manifest.model_dump(), "demo_recall_at_1": round(recall[label], 4)})
    print(f"# recorded R@1 {recall[label]:.4f} in {gen_dir / MANIFEST}")


if __name__ == "__main__":
    main()
