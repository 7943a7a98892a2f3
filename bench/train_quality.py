"""Does metric-learning training help? Held-out products of the demo catalog, before vs after, per loss.

The catalog's products are split by product (seeded, the same rule as ``lookalike train``): training
products, validation products (best epoch) and test products that no run ever sees. The "before" row is
the pretrained EfficientNet-Lite0 as the service uses it (GeM, no projection) at the same input size; each
loss then fine-tunes it (projection head + backbone) with the same small CPU budget.

    .venv/bin/python bench/train_quality.py [data/demo/catalog.csv] [--losses multi_similarity,triplet]
        [--epochs 3 --frozen-epochs 1 --image-size 128 --p 16 --k 4 --limit-products N --out bench/out/train_quality]

The defaults take about 20 minutes of a 2-core CPU (about 3-4 minutes per loss). Each run's folder holds
best.pt, metrics.jsonl, training.png and split.json, so
``lookalike eval --checkpoint bench/out/train_quality/<loss>/best.pt --catalog <catalog>`` reproduces its row.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from training.splits import SPLIT_FILE, make_split
from indexer.catalog import read_catalog
from training.datasets import ProductSplit, Sample
from models.embedding import EmbeddingNet, ModelConfig
from training.losses import available_losses
from training.train import TrainConfig, evaluate, train

ALL_LOSSES = ("multi_similarity", "triplet", "proxy_anchor", "normsoftmax", "arcface")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("catalog", nargs="?", default="data/demo/catalog.csv", type=Path)
    parser.add_argument("--losses", default=",".join(ALL_LOSSES), help=f"comma list of {available_losses()}")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--frozen-epochs", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--p", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="default: training images // (p*k)")
    parser.add_argument("--limit-products", type=int, default=None)
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--workers", type=int, default=1, help="data loader processes (augmentation off the main thread)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/out/train_quality"))
    args = parser.parse_args()

    rows = read_catalog(args.catalog)
    pool = [Sample(r.image, r.product_id, r.category) for r in rows]
    split, samples = make_split(pool, None, args.val_fraction, args.test_fraction, args.seed, args.limit_products)
    train_s, val_s, test_s = split.apply(samples)
    losses = [name.strip() for name in args.losses.split(",") if name.strip()]
    base = dict(image_size=args.image_size, embedding_dim=args.embedding_dim or None, epochs=args.epochs,
                frozen_epochs=args.frozen_epochs, p=args.p, k=args.k, lr=args.lr,
                steps_per_epoch=args.steps_per_epoch, num_workers=args.workers, device=args.device,
                cache_images=True, seed=args.seed, eval_start=False)
    print(f"catalog {args.catalog}: {len(samples)} images of {len(split.products('all'))} products")
    print(f"split (seed {args.seed}): train {len(split.train)} products / {len(train_s)} images, "
          f"val {len(split.val)} / {len(val_s)}, test {len(split.test)} / {len(test_s)} (never trained on)")
    print(f"losses: {', '.join(losses)}")
    print("config:", json.dumps({k: v for k, v in TrainConfig(**base).model_dump().items()
                                 if k not in ("weights_path", "device")}))
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"cuda {torch.cuda.is_available()}", flush=True)

    started = time.perf_counter()
    start_model = EmbeddingNet(ModelConfig(image_size=args.image_size))  # the service's default network
    before = evaluate(start_model, test_s, batch_size=64, device=args.device, num_workers=args.workers)
    print(f"before (pretrained, {args.image_size}px): R@1 {100 * before['recall@1']:.1f}  "
          f"MAP@R {100 * before['map@r']:.1f}  ({time.perf_counter() - started:.0f}s)", flush=True)

    results: dict[str, dict] = {}
    for loss in losses:
        out = args.out / loss
        out.mkdir(parents=True, exist_ok=True)
        ProductSplit(split.train, split.val, split.test, split.seed,
                     {**split.info, "source": f"catalog {args.catalog}", "limit_products": args.limit_products}
                     ).save(out / SPLIT_FILE)
        t0 = time.perf_counter()
        result = train(train_s, val_s, TrainConfig(**{**base, "loss": loss}), out, progress=False)
        seconds = time.perf_counter() - t0
        after = evaluate(result.best_path, test_s, batch_size=64, device=args.device, num_workers=args.workers)
        results[loss] = {"after": after, "best_epoch": result.best_epoch, "train_seconds": seconds,
                         "val": result.best_metrics, "losses": [row["loss"] for row in result.history]}
        print(f"{loss}: R@1 {100 * after['recall@1']:.1f}  MAP@R {100 * after['map@r']:.1f}  "
              f"(best epoch {result.best_epoch}, {seconds:.0f}s)", flush=True)

    print()
    print(f"Held-out test products ({len(split.test)} products, {len(test_s)} images; every image queries "
          f"all others), {args.image_size}px, {args.epochs} epochs ({args.frozen_epochs} frozen):")
    header = f"{'model':<22} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MAP@R':>6}   {'dR@1':>6} {'dMAP@R':>7} {'best ep':>7} {'train s':>8}"
    print(header)
    print("-" * len(header))

    def line(name: str, m: dict, extra: str = "") -> str:
        return (f"{name:<22} {100 * m['recall@1']:6.1f} {100 * m['recall@5']:6.1f} {100 * m['recall@10']:6.1f} "
                f"{100 * m['map@r']:6.1f}{extra}")

    print(line("pretrained (before)", before))
    for loss, r in results.items():
        a = r["after"]
        print(line(loss, a, f"   {100 * (a['recall@1'] - before['recall@1']):+6.1f} "
                            f"{100 * (a['map@r'] - before['map@r']):+7.1f} {r['best_epoch']:7d} {r['train_seconds']:8.0f}"))
    print(f"total {time.perf_counter() - started:.0f}s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({
        "catalog": str(args.catalog), "config": TrainConfig(**base).model_dump(mode="json"), "before": before,
        "results": results, "split": {k: len(v) for k, v in (("train", split.train), ("val", split.val),
                                                             ("test", split.test))},
    }, indent=1))
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
