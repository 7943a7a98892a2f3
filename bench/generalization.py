"""Does training generalise to categories it never saw? Backbone x training categories x products per category.

The demo catalog's categories are split into held-out *test categories* (never trained on, the default is
Bedroom, Lights, Vehicles, Characters) and a training pool. Each run trains on the first N pool categories
(seeded order; the smaller set is a subset of the larger) with at most M products per category, validating
on other products of those same categories, and is tested on every product of the held-out categories
(each image queries all the others). All runs get the same number of optimisation steps, so differences come
from the data, not from the compute. Backbones: EfficientNet-Lite0 pretrained on ImageNet vs ResNet-18
trained from scratch (random init); "untrained" rows show each starting point.

    .venv/bin/python bench/generalization.py [data/demo/catalog.csv] [--category-counts 4,8]
        [--products-per-category 10,40] [--backbones efficientnet_lite0,resnet18] [--steps-per-epoch 20]
        [--epochs 3] [--image-size 112] [--out bench/out/generalization]

The demo catalog has only 12 categories (one, Staircases, with 2 products), so the category counts are
4 vs 8 rather than 15 vs 25; with a larger catalog pass e.g. ``--category-counts 15,25``. The defaults take
roughly 20-30 minutes on a 2-core CPU; scale up with --epochs/--steps-per-epoch/--image-size.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from pathlib import Path

from indexer.catalog import read_catalog
from training.datasets import Sample, drop_small_products, split_by_category, split_by_product
from models.embedding import EmbeddingNet, ModelConfig
from training.train import TrainConfig, evaluate, train

DEFAULT_TEST_CATEGORIES = "Bedroom,Lights,Vehicles,Characters"
SCRATCH = {"efficientnet_lite0": False, "resnet18": True}  # which backbones start from random weights


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("catalog", nargs="?", default="data/demo/catalog.csv", type=Path)
    parser.add_argument("--test-categories", default=DEFAULT_TEST_CATEGORIES)
    parser.add_argument("--category-counts", default="4,8", type=_ints)
    parser.add_argument("--products-per-category", default="10,40", type=_ints)
    parser.add_argument("--backbones", default="efficientnet_lite0,resnet18")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--frozen-epochs", type=int, default=1, help="pretrained backbones only")
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--p", type=int, default=8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4, help="pretrained backbones; scratch uses 10x")
    parser.add_argument("--loss", default="multi_similarity")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/out/generalization"))
    args = parser.parse_args()

    rows = read_catalog(args.catalog)
    samples = drop_small_products([Sample(r.image, r.product_id, r.category) for r in rows])
    test_categories = [c.strip() for c in args.test_categories.split(",") if c.strip()]
    products_by_category: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        products_by_category[s.category].add(s.label)
    unknown = [c for c in test_categories if c not in products_by_category]
    if unknown:
        parser.error(f"unknown test categories {unknown}; the catalog has {sorted(products_by_category)}")
    pool, test = split_by_category(samples, test_categories)
    pool_categories = sorted({s.category for s in pool})
    random.Random(args.seed).shuffle(pool_categories)
    if max(args.category_counts) > len(pool_categories):
        parser.error(f"only {len(pool_categories)} training categories outside the test ones: {pool_categories}")
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]

    print(f"catalog {args.catalog}: {len(products_by_category)} categories")
    print(f"test categories (never trained on): {test_categories}: {len({s.label for s in test})} products, "
          f"{len(test)} images")
    print(f"training pool, seeded order: {[(c, len(products_by_category[c])) for c in pool_categories]}")
    print(f"config: loss {args.loss}, {args.epochs} epochs x {args.steps_per_epoch} steps of "
          f"{args.p}x{args.k}, {args.image_size}px, lr {args.lr} (scratch x10), seed {args.seed}", flush=True)

    results = []
    started = time.perf_counter()
    for backbone in backbones:
        scratch = SCRATCH.get(backbone, False)
        start = EmbeddingNet(ModelConfig(backbone=backbone, pretrained=not scratch, image_size=args.image_size))
        m = evaluate(start, test, device=args.device)
        results.append({"backbone": backbone, "init": "random" if scratch else "imagenet", "categories": 0,
                        "per_category": 0, "train_products": 0, "test": m, "seconds": 0})
        print(f"{backbone} untrained: R@1 {100 * m['recall@1']:.1f} MAP@R {100 * m['map@r']:.1f}", flush=True)
        for n_categories in args.category_counts:
            chosen = pool_categories[:n_categories]
            for per_category in args.products_per_category:
                rng = random.Random(args.seed)
                keep: set[str] = set()
                for category in chosen:
                    products = sorted(products_by_category[category])
                    keep.update(rng.sample(products, min(per_category, len(products))))
                subset = [s for s in pool if s.label in keep]
                split = split_by_product(subset, val_fraction=0.15, test_fraction=0.0, seed=args.seed)
                train_s, val_s, _ = split.apply(subset)
                p = min(args.p, len(split.train))
                config = TrainConfig(
                    loss=args.loss, backbone=backbone, pretrained=not scratch, image_size=args.image_size,
                    epochs=args.epochs, frozen_epochs=0 if scratch else args.frozen_epochs,
                    steps_per_epoch=args.steps_per_epoch, p=p, k=args.k, lr=args.lr * (10 if scratch else 1),
                    freeze_bn=not scratch, num_workers=0, device=args.device, cache_images=True,
                    eval_start=False, seed=args.seed)
                name = f"{backbone}-c{n_categories}-p{per_category}"
                t0 = time.perf_counter()
                result = train(train_s, val_s, config, args.out / name, progress=False)
                m = evaluate(result.best_path, test, device=args.device)
                seconds = time.perf_counter() - t0
                results.append({"backbone": backbone, "init": "random" if scratch else "imagenet",
                                "categories": n_categories, "per_category": per_category,
                                "train_products": len(split.train), "test": m, "seconds": round(seconds)})
                print(f"{name}: {len(split.train)} train products, R@1 {100 * m['recall@1']:.1f} "
                      f"MAP@R {100 * m['map@r']:.1f} ({seconds:.0f}s)", flush=True)

    print()
    print(f"Test: {len(test_categories)} held-out categories, {len({s.label for s in test})} products "
          f"({args.image_size}px)")
    header = f"{'backbone':<20} {'init':<9} {'cats':>4} {'max/cat':>7} {'train prods':>11} {'R@1':>6} {'R@10':>6} {'MAP@R':>6} {'secs':>5}"
    print(header)
    print("-" * len(header))
    for r in results:
        m = r["test"]
        cats = "-" if not r["categories"] else str(r["categories"])
        per = "-" if not r["per_category"] else str(r["per_category"])
        print(f"{r['backbone']:<20} {r['init']:<9} {cats:>4} {per:>7} {r['train_products']:>11} "
              f"{100 * m['recall@1']:6.1f} {100 * m['recall@10']:6.1f} {100 * m['map@r']:6.1f} {r['seconds']:5d}")
    print(f"total {time.perf_counter() - started:.0f}s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "test_categories": test_categories, "results": results},
                                                      indent=1))
    plot(results, args.out / "generalization.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'generalization.png'}")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    labels = [("untrained" if not r["categories"] else f"{r['categories']} cat x {r['per_category']}")
              for r in results]
    backbones = sorted({r["backbone"] for r in results}, key=[r["backbone"] for r in results].index)
    for ax, metric, title in ((axes[0], "recall@1", "Recall@1"), (axes[1], "map@r", "MAP@R")):
        width = 0.8 / len(backbones)
        configs = list(dict.fromkeys(labels))
        for i, backbone in enumerate(backbones):
            values = {lab: r["test"][metric] for lab, r in zip(labels, results) if r["backbone"] == backbone}
            xs = [j + i * width for j in range(len(configs))]
            ax.bar(xs, [100 * values.get(c, 0) for c in configs], width, label=backbone)
        ax.set_xticks([j + width * (len(backbones) - 1) / 2 for j in range(len(configs))])
        ax.set_xticklabels(configs, rotation=20)
        ax.set_title(f"{title} on held-out categories (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
