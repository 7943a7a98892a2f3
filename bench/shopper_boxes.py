"""How good are the localiser's boxes on shoppers' photos, and how do they fail?

The same scenes as ``bench/shopper_quality.py`` (cached under --scenes-dir; the second product's box is drawn
again from the same seeds). For each localiser: the IoU of its top box with the query product's true box (the
box of its visible pixels), the share of scenes where any of its detections would have done (IoU >= 0.5), the
share where the crop the service cuts (``models.localiser.crop_window``) holds >= 90% of the product's pixels,
and each top box with IoU < 0.5 put in one failure class:

- ``other product``: it overlaps the second product in the photo more than the query product (IoU >= 0.3);
- ``background``: it holds < 10% of the true box (a boat, a leaf, a cup of the photograph);
- ``too tight``: it lies inside the product (>= 75% of it is product) but misses >= 25% of the true box;
- ``too wide``: it holds >= 75% of the true box but the product is < 75% of it;
- ``shifted``: the rest (partial overlap on both counts); ``missed``: nothing detected.

    .venv/bin/python bench/shopper_boxes.py --products-from data/runs/composite/split.json \
        --localiser models/weights/localiser.pt [--localiser other.pt] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.shopper_quality import build_scenes, compose_queries  # noqa: E402
from indexer import read_catalog  # noqa: E402
from models.localiser import Localiser, crop_window  # noqa: E402
from training.localiser import box_intersection, box_iou  # noqa: E402

Box = tuple[float, float, float, float]
FAILURES = ("other product", "background", "too tight", "too wide", "shifted", "missed")


def covered(outer: Box, inner: Box) -> float:
    """The share of ``inner``'s area inside ``outer`` (boxes x, y, w, h)."""
    return box_intersection(outer, inner) / max(1e-9, inner[2] * inner[3])


def failure(top: Box | None, truth: Box, others: Sequence[Box]) -> str | None:
    """The failure class of a top box (None: IoU >= 0.5 with the true box); see the module's docstring."""
    if top is None:
        return "missed"
    iou = box_iou(top, truth)
    if iou >= 0.5:
        return None
    other = max((box_iou(top, o) for o in others), default=0.0)
    if other > iou and other >= 0.3:
        return "other product"
    holds, precision = covered(top, truth), covered(truth, top)
    if holds < 0.1:
        return "background"
    if holds < 0.75 and precision >= 0.75:
        return "too tight"
    if holds >= 0.75 and precision < 0.75:
        return "too wide"
    return "shifted"


def product_in_crop(mask: np.ndarray, box: Box, margin: float) -> float:
    """The share of the product's pixels (``mask``) inside the square the service crops around ``box``."""
    h, w = mask.shape
    left, top, side = crop_window((w, h), box, margin)
    inside = mask[max(0, top):max(0, top + side), max(0, left):max(0, left + side)].sum()
    return float(inside / max(1, mask.sum()))


def box_report(detections: list[list], truths: list[Box], others: list[list[Box]], masks: list[np.ndarray],
               margin: float) -> dict:
    """IoU figures and failure classes of the top box (``detections``: per scene, boxes best first)."""
    tops = [d[0] if d else None for d in detections]
    ious = np.array([box_iou(t, b) if t is not None else 0.0 for t, b in zip(tops, truths)])
    best = np.array([max((box_iou(d, b) for d in ds), default=0.0) for ds, b in zip(detections, truths)])
    held = np.array([product_in_crop(m, t, margin) if t is not None else 1.0 for m, t in zip(masks, tops)])
    classes = Counter(failure(t, b, o) for t, b, o in zip(tops, truths, others))
    n = len(truths)
    return {"scenes": n, "mean_iou": round(float(ious.mean()), 3),
            "iou_quantiles_10_25_50_75_90": [round(float(q), 3) for q in np.quantile(ious, [.1, .25, .5, .75, .9])],
            "iou>=0.5": round(float((ious >= 0.5).mean()), 3), "iou>=0.7": round(float((ious >= 0.7).mean()), 3),
            "any_detection_iou>=0.5": round(float((best >= 0.5).mean()), 3),
            "crop_holds_90%_of_product": round(float((held >= 0.9).mean()), 3),
            "detections_per_photo": round(float(np.mean([len(d) for d in detections])), 2),
            "failures": {c: round(classes[c] / n, 3) for c in FAILURES}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", type=Path, default=Path("data/demo"))
    parser.add_argument("--scenes-dir", type=Path, default=Path("data/shopper"))
    parser.add_argument("--cutouts-dir", type=Path, default=Path("data/cutouts"))
    parser.add_argument("--localiser", type=Path, action="append", default=[])
    parser.add_argument("--products-from", type=Path, default=None, help="a training run's split.json")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--margin", type=float, default=0.1, help="the service's CROP_MARGIN")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = read_catalog(args.demo_dir / "catalog.csv")
    products = list(dict.fromkeys(r.product_id for r in rows))
    if args.products_from:
        held = set(json.loads(args.products_from.read_text())[args.split])
        products = [p for p in products if p in held]
    if args.limit:
        products = products[: args.limit]
    scenes = build_scenes(args.demo_dir, args.scenes_dir, args.cutouts_dir, products, args.seed, args.workers)
    placed = {stem: p for stem, _, _, p in compose_queries(args.demo_dir, args.cutouts_dir, products, args.seed,
                                                           args.workers)}
    if any(placed[s.path.stem][0].box != s.box for s in scenes):
        raise SystemExit(f"{args.scenes_dir}: cached boxes differ from the scenes drawn again (stale cache?)")
    others = [[p.box for p in placed[s.path.stem][1:]] for s in scenes]
    truths = [s.box for s in scenes]
    masks = [s.mask() > 8 / 255 for s in scenes]
    images = [Image.open(s.path).convert("RGB") for s in scenes]
    for path in args.localiser or [Path("models/weights/localiser.pt")]:
        localiser = Localiser.load(path)
        detections = [[d.box for d in localiser.detect(im)] for im in images]
        report = {"localiser": str(path), **box_report(detections, truths, others, masks, args.margin)}
        if args.json:
            print(json.dumps(report), flush=True)
            continue
        print(f"{path}: {report['scenes']} shopper photos")
        for key, value in report.items():
            if key not in ("localiser", "scenes", "failures"):
                print(f"  {key:<30} {value}")
        print("  top box with IoU < 0.5, by class: " + ", ".join(f"{c} {v:.3f}" for c, v in report["failures"].items()))


if __name__ == "__main__":
    main()
