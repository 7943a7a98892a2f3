"""Extraction throughput: the whole pipeline (read + decode + preprocess in DataLoader workers + forward) against
the runtime's forward alone on pre-decoded uint8 pixel batches at the same batch size (the ceiling the pipeline
can reach), for PyTorch and the default (optimised) runtime side by side, at one or more worker counts and
runtime thread counts (the split of the cores between decoding and the forward).

Images: the demo catalog's (data/demo/images) when built, else generated JPEG "photos" (640x480).

    .venv/bin/python bench/extract.py --images 512 --batch-size 32 --workers 0,1,2 --runtimes torch,auto [--threads 1,2]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.extract import extract_embeddings  # noqa: E402
from models import Embedder, ModelConfig, RuntimeOptions, build_model, load_image  # noqa: E402


def generated_images(root: Path, n: int, size: tuple[int, int] = (640, 480)) -> list[Path]:
    """Seeded JPEG photos of random shapes on textured backgrounds (decode cost like a real product shot)."""
    rng = random.Random(1338)
    paths = []
    for i in range(n):
        image = Image.effect_noise(size, 40).convert("RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.randint(0, size[0]), rng.randint(0, size[1])
            r = rng.randint(30, 160)
            colour = tuple(rng.randint(0, 255) for _ in range(3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x - r, y - r, x + r, y + r], fill=colour)
        path = root / f"img-{i:05d}.jpg"
        image.filter(ImageFilter.GaussianBlur(1)).save(path, quality=90)
        paths.append(path)
    return paths


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (DataLoader workers are joined when a pass ends)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--demo-dir", default="data/demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runtimes", default="torch,auto", help="runtimes side by side (auto: the default one)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", default="default", help="comma-separated runtime threads per forward "
                        "(default: the runtime's own choice, all cores)")
    parser.add_argument("--cache-dir", default="data/runtime-cache", help="where exported models are cached")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    model = build_model(ModelConfig(image_size=args.image_size))
    demo = sorted(p for p in (Path(args.demo_dir) / "images").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    demo = demo[: args.images]
    tmp = None
    if len(demo) >= args.images:
        paths, source = demo, f"{len(demo)} demo catalog images ({args.demo_dir}/images)"
    else:
        tmp = tempfile.TemporaryDirectory()
        paths = generated_images(Path(tmp.name), args.images)
        source = f"{len(paths)} generated 640x480 JPEGs (no demo catalog under {args.demo_dir})"
    torch.set_num_threads(os.cpu_count() or 1)  # a batch job: every core for the forward (as `lookalike index`)
    print(f"# extraction benchmark on {platform.node()} ({os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads); shared, loaded machine")
    print(f"# {source}; model {model.config.backbone} at {args.image_size}px, batch {args.batch_size}")
    # CPU ms per image (all processes) is steadier than images/s on a shared machine: the pipeline's CPU per image
    # over the forward's says how far the cores allow the pipeline to keep up with the forward.
    print("| runtime | threads | pipeline | images/s | of its forward-only | CPU ms per image |")
    print("|---|---|---|---|---|---|")
    for runtime, threads in ((r, t) for r in args.runtimes.split(",") for t in args.threads.split(",")):
        options = RuntimeOptions(runtime=runtime, precision=args.precision, cache_dir=Path(args.cache_dir),
                                 threads=None if threads == "default" else int(threads))
        torch.set_num_threads(options.threads or os.cpu_count() or 1)  # PyTorch's forward threads (per process)
        embedder = Embedder(model, device=args.device, options=options)
        label = f"{embedder.runtime_name} {embedder.precision} | {getattr(embedder.runtime, 'threads', None) or threads}"
        batch = torch.stack([embedder.pixels(load_image(p, draft_size=args.image_size, short_side=args.image_size))
                             for p in paths[: args.batch_size]])
        embedder.embed_tensors(batch)  # warm-up
        rounds = max(1, len(paths) // args.batch_size)
        start, cpu = time.perf_counter(), cpu_seconds()
        for _ in range(rounds):
            embedder.embed_tensors(batch)
        floor = rounds * len(batch) / (time.perf_counter() - start)
        cpu_ms = 1000 * (cpu_seconds() - cpu) / (rounds * len(batch))
        print(f"| {label} | forward only (pre-decoded uint8 pixels) | {floor:.1f} | 100% | {cpu_ms:.1f} |", flush=True)
        for workers in (int(w) for w in args.workers.split(",")):
            start, cpu = time.perf_counter(), cpu_seconds()
            extract_embeddings(paths, embedder, batch_size=args.batch_size, workers=workers, progress=False)
            rate = len(paths) / (time.perf_counter() - start)
            cpu_ms = 1000 * (cpu_seconds() - cpu) / len(paths)
            print(f"| {label} | decode+resize in {workers} DataLoader workers, forward | {rate:.1f} | "
                  f"{100 * rate / floor:.0f}% | {cpu_ms:.1f} |", flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
