"""Retrieval quality on shoppers' photos: held-out demo views composited into real photographs.

Every held-out query view of the demo catalog (queries.csv) is rendered again with an alpha mask
(``demo.cutouts``) and pasted into a photograph from Debian's ``plasma-workspace-wallpapers`` (the benchmark's
half of the photographic ones, see ``training.composite``): the object spans 20-70% of the frame, at a random
place, one in five runs over an edge, three in ten share the photo with a smaller second product, and the
photo is blurred, noised, colour-cast and JPEG-compressed. Scenes are seeded and cached under --scenes-dir.

Rows (product-level Recall@1/5/10 over the whole catalog): the whole frame as today's service embeds it, each
localiser's crop (the activation-map baseline, the trained FCOS localiser), and the crop of the true box
(oracle: the ceiling for localisation). The clean set (the held-out renders as they are) shows what
localisation costs where there is nothing to find. Also times a localisation against one embedding forward.
``--mask-error-rows`` spoils the true mask one way at a time (edge moved, coarse grids) to show how exact a
predicted mask must be; ``--gallery-composites K`` scores every row again against a gallery moved toward K
shopper-like photos of each product (index-side adaptation).

    .venv/bin/python bench/shopper_quality.py [--limit N] [--checkpoint best.pt] [--json]
    (needs: the demo catalog, `apt-get install plasma-workspace-wallpapers`)
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.demo_quality import product_recall, served_vectors  # noqa: E402
from demo.cutouts import render_cutouts  # noqa: E402
from indexer import read_catalog  # noqa: E402
from indexer.extract import extract_embeddings  # noqa: E402
from models import Embedder, ModelConfig, build_model  # noqa: E402
from models.category_probe import fit_category_probe  # noqa: E402
from models.localiser import (ActivationLocaliser, Detector, Localiser, LocaliserConfig, crop_window,  # noqa: E402
                              looks_like_catalog_photo, object_crop)
from models.matting import WHITE, box_from_mask, coarse_mask, matte, matted_crop  # noqa: E402
from training.composite import (BENCH_WALLPAPERS, Placed, SceneConfig, compose_scene, load_backgrounds,  # noqa: E402
                                non_benchmark_wallpapers, wallpaper_paths)

KS = (1, 5, 10)


@dataclass(frozen=True)
class ShopperScene:
    """One shopper-photo query: the scene, its product, the product's true box and its true mask (PNG, L)."""

    path: Path
    product: str
    box: tuple[float, float, float, float]
    mask_path: Path

    def mask(self) -> np.ndarray:
        return np.asarray(Image.open(self.mask_path), dtype=np.float32) / 255.0


def compose_queries(demo_dir: Path, cutouts_dir: Path, products: list[str], seed: int, workers: int,
                    degrade: bool = True) -> Iterator[tuple[str, str, Image.Image, list[Placed]]]:
    """Each held-out view of ``products`` pasted into a benchmark photograph: (scene name, product id, scene, the
    placements: the product's first, then any second product's). Seeded per view, so the same product list gives
    the same scenes; ``degrade=False`` gives the very same scenes before the camera faults (blur, noise, cast,
    JPEG)."""
    cutouts = render_cutouts(demo_dir, cutouts_dir, kind="queries", products=set(products), workers=workers)
    backgrounds = load_backgrounds(wallpaper_paths(BENCH_WALLPAPERS))
    names = sorted(cutouts)
    images = {name: [Image.open(p).convert("RGBA") for p in cutouts[name]] for name in names}
    for name in names:
        for k, main in enumerate(images[name]):
            rng = np.random.default_rng([seed, zlib.crc32(name.encode()), k])
            others = [images[o][0] for o in rng.choice([o for o in names if o != name], size=min(8, len(names) - 1),
                                                       replace=False)] if len(names) > 1 else []
            scene, placed = compose_scene(rng, backgrounds, main, others, SceneConfig(degrade=degrade))
            yield f"{name}-{k}", name, scene, placed


def build_scenes(demo_dir: Path, scenes_dir: Path, cutouts_dir: Path, products: list[str], seed: int, workers: int
                 ) -> list[ShopperScene]:
    """The shopper-photo queries (cached under ``scenes_dir``: JPEG scenes, PNG masks and an index CSV). The index
    is versioned: v2's boxes are those of the visible pixels (v1's, from before that fix of ``training.composite``,
    were the whole object's box clipped to the frame); the scenes and masks themselves are unchanged."""
    index = scenes_dir / f"scenes-seed{seed}-v2.csv"
    if index.exists():
        with index.open() as handle:
            rows = [ShopperScene(scenes_dir / r["image"], r["product_id"], tuple(float(r[c]) for c in "xywh"),
                                 scenes_dir / r["mask"]) for r in csv.DictReader(handle) if r.get("mask")]
        wanted = set(products)
        if {r.product for r in rows} >= wanted and all(r.mask_path.exists() for r in rows if r.product in wanted):
            return [r for r in rows if r.product in wanted]
    rows = []
    for stem, name, scene, (placed, *_) in compose_queries(demo_dir, cutouts_dir, products, seed, workers):
        rel, mask_rel = f"scenes/{stem}.jpg", f"scenes/{stem}-mask.png"
        (scenes_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        scene.save(scenes_dir / rel, quality=92)
        mask = np.round(placed.mask(scene.size) * 255).astype(np.uint8)
        Image.fromarray(mask, "L").save(scenes_dir / mask_rel)
        rows.append(ShopperScene(scenes_dir / rel, name, placed.box, scenes_dir / mask_rel))
    with index.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "product_id", "x", "y", "w", "h", "mask"])
        writer.writerows([str(r.path.relative_to(scenes_dir)), r.product, *r.box,
                          str(r.mask_path.relative_to(scenes_dir))] for r in rows)
    return rows


def box_mask(size: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """1 inside ``box`` (x, y, w, h, rounded to pixels), 0 elsewhere, in a frame of ``size``."""
    mask = np.zeros((size[1], size[0]), np.float32)
    x, y, w, h = (int(round(v)) for v in box)
    mask[max(0, y):y + h, max(0, x):x + w] = 1.0
    return mask


def grown_or_shrunk(mask: np.ndarray, pixels: int) -> np.ndarray:
    """The mask dilated (``pixels`` > 0) or eroded (< 0) by that many pixels: a mask that is right but for its
    edge, spilling onto the room or eating into the object."""
    img = Image.fromarray(np.round(np.clip(mask, 0, 1) * 255).astype(np.uint8), "L")
    size = 2 * abs(pixels) + 1
    img = img.filter(ImageFilter.MaxFilter(size) if pixels > 0 else ImageFilter.MinFilter(size))
    return np.asarray(img, np.float32) / 255.0


def mask_at_crop_resolution(mask: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float],
                            cells: int) -> np.ndarray:
    """The mask averaged on a ``cells`` x ``cells`` grid over the crop window of ``box`` (what a head drawing
    ``cells`` pixels across the crop could give at best), smoothly upsampled; zero outside the window."""
    x0, y0, side = crop_window(size, box)
    window = Image.fromarray(mask.astype(np.float32), "F").crop((x0, y0, x0 + side, y0 + side))  # 0 off the photo
    back = window.resize((cells, cells), Image.Resampling.BOX).resize((side, side), Image.Resampling.BILINEAR)
    frame = Image.new("F", size, 0.0)
    frame.paste(back, (x0, y0))
    return np.asarray(frame, np.float32)


def composite_gallery_crops(demo_dir: Path, cutouts_dir: Path, products: list[str], count: int, seed: int,
                            detector: Detector, workers: int) -> tuple[list[Image.Image], list[str]]:
    """``count`` shopper-like photos of each catalog product (its first indexed view's cut-out pasted into the
    training photographs, never the benchmark's), each cropped the way a query is: the localiser's top box (the
    whole photo when it finds nothing). Returns the crops and their product ids."""
    cutouts = render_cutouts(demo_dir, cutouts_dir, kind="images", per_item=1, products=set(products),
                             workers=workers)
    backgrounds = load_backgrounds(non_benchmark_wallpapers())
    crops, owners = [], []
    for name in products:
        if not cutouts.get(name):
            continue
        main = Image.open(cutouts[name][0]).convert("RGBA")
        for k in range(count):
            rng = np.random.default_rng([seed, 1, zlib.crc32(name.encode()), k])
            scene, _ = compose_scene(rng, backgrounds, main, (), SceneConfig(second_prob=0.0))
            found = detector.detect(scene)
            crops.append(object_crop(scene, found[0].box) if found else scene)
            owners.append(name)
    return crops, owners


def blend_gallery(gallery: np.ndarray, gallery_products: list[str], composites: np.ndarray, owners: list[str],
                  weight: float) -> np.ndarray:
    """Each catalog vector moved toward the mean of its product's composite vectors, renormalised:
    ``normalise((1 - weight) g + weight mean)``; products without composites keep their vectors."""
    means = {}
    for name in dict.fromkeys(owners):
        rows = composites[[i for i, o in enumerate(owners) if o == name]].mean(axis=0)
        means[name] = rows / np.linalg.norm(rows)
    out = np.array(gallery, dtype=np.float32, copy=True)
    for i, name in enumerate(gallery_products):
        if name in means:
            out[i] = (1.0 - weight) * out[i] + weight * means[name]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def embed_crops(embedder: Embedder, images: list[Image.Image], boxes: list[tuple | None]) -> np.ndarray:
    """Embed each image's crop around its box (the whole image where the box is None)."""
    crops = [object_crop(im, box) if box is not None else im for im, box in zip(images, boxes)]
    return embedder.embed_images(crops, batch_size=32)


def detect_all(detector: Detector, images: list[Image.Image]) -> tuple[list[tuple | None], float]:
    """The top box per image (None when nothing is found) and the median seconds per detection."""
    boxes, seconds = [], []
    for im in images:
        start = time.perf_counter()
        found = detector.detect(im)
        seconds.append(time.perf_counter() - start)
        boxes.append(found[0].box if found else None)
    return boxes, statistics.median(seconds)


def forward_seconds(embedder: Embedder, repeats: int = 30) -> float:
    """Median seconds of one embedding forward (batch 1) at the model's input size."""
    x = torch.zeros(1, 3, embedder.image_size, embedder.image_size)
    embedder.embed_tensors(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        embedder.embed_tensors(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gallery_vectors(embedder: Embedder, rows: list, args: argparse.Namespace) -> np.ndarray:
    """The catalog's vectors by this model: the served generation's, a cached copy, or computed (and cached)."""
    served = served_vectors(args.data_dir, embedder.model_id, rows)
    if served is not None:
        return np.asarray(served)
    cache = args.scenes_dir / f"gallery-{embedder.model_id}-{len(rows)}.npy"
    if cache.exists():
        return np.load(cache)
    vectors = extract_embeddings([r.image for r in rows], embedder, workers=args.workers, progress=False)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


def report(results: list, args: argparse.Namespace, model_name: str, set_name: str, method: str, queries: int,
           recall: dict[int, float], extra: dict | None = None) -> None:
    """Keep and print one row (a JSON object with --json)."""
    row = {"model": model_name, "set": set_name, "method": method, "queries": queries,
           **{f"R@{k}": round(recall[k], 4) for k in KS}, **(extra or {})}
    results.append(row)
    if args.json:
        print(json.dumps(row), flush=True)
    else:
        tail = "".join(f"  {k} {v}" for k, v in (extra or {}).items())
        print(f"{model_name:<34} {set_name:<8} {method:<60} {recall[1]:>6.3f} {recall[5]:>6.3f} {recall[10]:>6.3f}"
              f"{tail}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", type=Path, default=Path("data/demo"))
    parser.add_argument("--scenes-dir", type=Path, default=Path("data/shopper"))
    parser.add_argument("--cutouts-dir", type=Path, default=Path("data/cutouts"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="reuse the served generation's vectors")
    parser.add_argument("--localiser", type=Path, default=Path("models/weights/localiser.pt"))
    parser.add_argument("--mask-localiser", type=Path, default=None,
                        help="a localiser with a mask head (`lookalike train-mask`) for the matted rows (default: "
                             "--localiser, when it has one)")
    parser.add_argument("--checkpoint", action="append", default=[], help="also evaluate a trained checkpoint")
    parser.add_argument("--no-pretrained", action="store_true", help="only the given checkpoints")
    parser.add_argument("--limit", type=int, default=None, help="queries of the first N products only")
    parser.add_argument("--products-from", type=Path, default=None,
                        help="a training run's split.json: query its --split products only (held out from training)")
    parser.add_argument("--split", default="test", help="which products of --products-from")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the activation-map baseline and the box-share rule (rows already measured)")
    parser.add_argument("--route-weight", type=float, default=0.1,
                        help="category routing: score + weight x p(item's category | query)")
    parser.add_argument("--degradation-rows", action="store_true",
                        help="oracle rows on the same scenes before blur, noise, colour cast and JPEG")
    parser.add_argument("--mask-error-rows", action="store_true",
                        help="oracle rows with the true mask spoiled: its edge moved by a few pixels, or drawn on a "
                             "coarse grid over the crop (how good a predicted mask must be)")
    parser.add_argument("--gallery-composites", type=int, default=0, metavar="K",
                        help="also score every row against a gallery blended with K shopper-like photos per "
                             "product (training photographs, cropped by the localiser): index-side adaptation")
    parser.add_argument("--gallery-blend", type=float, default=0.3, help="the blend's weight (--gallery-composites)")
    parser.add_argument("--only", action="append", default=[],
                        help="only the rows whose method contains this text (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (timings are per thread count)")
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = read_catalog(args.demo_dir / "catalog.csv")
    with (args.demo_dir / "queries.csv").open() as handle:
        clean = [(args.demo_dir / r["query_image"], r["product_id"]) for r in csv.DictReader(handle)]
    products = list(dict.fromkeys(r.product_id for r in rows))
    if args.products_from:  # a run's held-out products (the gallery stays the whole catalog)
        held = set(json.loads(args.products_from.read_text())[args.split])
        products = [p for p in products if p in held]
    if args.limit:  # the first N products of the catalog as queries (the gallery stays the whole catalog)
        products = products[: args.limit]
    clean = [q for q in clean if q[1] in set(products)]
    scenes = build_scenes(args.demo_dir, args.scenes_dir, args.cutouts_dir, products, args.seed, args.workers)
    shop_images = [Image.open(s.path).convert("RGB") for s in scenes]
    shop_truth = [s.product for s in scenes]
    shop_masks = [s.mask() for s in scenes]
    oracle_boxes = [s.box for s in scenes]
    # the object matted with its true mask onto the catalog's white, cropped like a catalog photo (the ceiling of
    # segment-then-embed); the same from a mask on a 40-cell grid (what a stride-4 head at 160 px can draw)
    matted = {("shopper", "crop: true mask on white (oracle)"): [
        object_crop(matte(im, m), b, fill=WHITE) for im, m, b in zip(shop_images, shop_masks, oracle_boxes)],
        ("shopper", "crop: true mask on a 40-cell grid on white (oracle)"): [
        object_crop(matte(im, coarse_mask(m, 40)), b, fill=WHITE)
        for im, m, b in zip(shop_images, shop_masks, oracle_boxes)]}
    matted[("shopper", "crop: true box, outside it on white (oracle, no mask)")] = [
        object_crop(matte(im, box_mask(im.size, b)), b, fill=WHITE) for im, b in zip(shop_images, oracle_boxes)]
    trained = Localiser.load(args.localiser) if args.localiser.exists() else None  # loaded once, shared below
    if args.mask_error_rows:  # how exact must a predicted mask be? the true mask, spoiled in one way at a time
        for pixels in (-3, 3, 8):
            edge = f"{'grown' if pixels > 0 else 'shrunk'} by {abs(pixels)} px"
            matted[("shopper", f"crop: true mask {edge}, on white (oracle)")] = [
                object_crop(matte(im, grown_or_shrunk(m, pixels)), b, fill=WHITE)
                for im, m, b in zip(shop_images, shop_masks, oracle_boxes)]
        for cells in (28, 56, 112):
            matted[("shopper", f"crop: true mask on a {cells}-cell grid over the crop, on white (oracle)")] = [
                object_crop(matte(im, mask_at_crop_resolution(m, im.size, b, cells)), b, fill=WHITE)
                for im, m, b in zip(shop_images, shop_masks, oracle_boxes)]
        side = trained.config.image_size if trained is not None else LocaliserConfig().image_size
        grid = f"a {side}-cell grid over the photo (the localiser's input)"
        matted[("shopper", f"crop: true mask on {grid}, on white (oracle)")] = [
            object_crop(matte(im, coarse_mask(m, side)), b, fill=WHITE)
            for im, m, b in zip(shop_images, shop_masks, oracle_boxes)]
    if args.degradation_rows:  # the same scenes before the camera faults: how much of the gap is blur/noise/JPEG
        plain = {stem: (scene, placed[0]) for stem, _, scene, placed in compose_queries(
            args.demo_dir, args.cutouts_dir, products, args.seed, args.workers, degrade=False)}
        plain_scenes = [plain[s.path.stem] for s in scenes]
        matted[("shopper", "crop: true box, no camera faults (oracle)")] = [
            object_crop(scene, placed.box) for scene, placed in plain_scenes]
        matted[("shopper", "crop: true mask on white, no camera faults (oracle)")] = [
            object_crop(matte(scene, placed.mask(scene.size)), placed.box, fill=WHITE) for scene, placed in plain_scenes]
    clean_images = [Image.open(p).convert("RGB") for p, _ in clean]
    clean_truth = [prod for _, prod in clean]

    detectors: dict[str, Detector] = {} if args.no_baseline else {"activation map (untrained)": ActivationLocaliser()}
    if trained is not None:
        detectors[f"localiser {args.localiser.name}"] = trained
    else:
        print(f"(no localiser at {args.localiser}: run `lookalike train-detector` for its rows)", file=sys.stderr)
    timing = {}
    shop_boxes: dict[str, list] = {}
    clean_boxes: dict[str, list] = {}
    for name, det in detectors.items():
        shop_boxes[name], timing[name] = detect_all(det, shop_images)
        clean_boxes[name], _ = detect_all(det, clean_images)
    trained_name = next((n for n in detectors if n.startswith("localiser")), None)
    # segment, then embed: the localiser's top box, its mask head's foreground matted onto white inside that box's
    # crop (plain crop where the mask is empty there; whole frame where nothing is found or on catalog-style photos)
    if args.mask_localiser is None:
        mask_localiser = trained
    else:
        mask_localiser = Localiser.load(args.mask_localiser) if args.mask_localiser.exists() else None
    if trained_name is not None:  # the cheapest matte: whiten what is outside the box
        matted[("shopper", f"crop: {trained_name}, outside its box on white")] = [
            object_crop(matte(im, box_mask(im.size, b)), b, fill=WHITE) if b is not None else im
            for im, b in zip(shop_images, shop_boxes[trained_name])]
    if mask_localiser is not None and mask_localiser.has_mask:
        mask_name = f"localiser {(args.mask_localiser or args.localiser).name}"
        for set_name, images, truth_boxes in (("shopper", shop_images, oracle_boxes), ("clean", clean_images, None)):
            located, seconds = [], []
            for im in images:
                start = time.perf_counter()
                found = mask_localiser.locate(im)
                if found.detections:
                    matted_crop(im, found.mask, found.detections[0].box)
                seconds.append(time.perf_counter() - start)
                located.append(found)
            if set_name == "shopper":
                timing[f"{mask_name} + mask + matte"] = statistics.median(seconds)
            crops = [matted_crop(im, f.mask, f.detections[0].box) if f.detections and not looks_like_catalog_photo(im)
                     else im for im, f in zip(images, located)]
            matted[(set_name, f"crop: {mask_name} box, its mask on white, not on catalog-style photos")] = crops
            if set_name == "clean":
                matted[(set_name, f"crop: {mask_name} box, its mask on white (every photo)")] = [
                    matted_crop(im, f.mask, f.detections[0].box) if f.detections else im
                    for im, f in zip(images, located)]
            else:
                matted[(set_name, f"crop: box from {mask_name}'s mask in its box's square, on white")] = [
                    matted_crop(im, f.mask, box_from_mask(f.mask, im.size, f.detections[0].box)) if f.detections
                    else im for im, f in zip(images, located)]
                matted[(set_name, f"crop: true box, {mask_name}'s mask on white")] = [
                    matted_crop(im, f.mask, b) for im, f, b in zip(images, located, truth_boxes)]
                matted[(set_name, f"crop: true box, {mask_name}'s mask snapped by a guided filter, on white")] = [
                    matted_crop(im, f.mask, b, refine=True) for im, f, b in zip(images, located, truth_boxes)]
    rules = {}  # the trained localiser's box, or the whole frame where a rule says not to crop
    if trained_name is not None:
        for set_name, images, boxes in (("shopper", shop_images, shop_boxes[trained_name]),
                                        ("clean", clean_images, clean_boxes[trained_name])):
            rules[(set_name, "not on catalog-style photos")] = [
                None if looks_like_catalog_photo(im) else b for im, b in zip(images, boxes)]
            if not args.no_baseline:
                rules[(set_name, "not when the box covers >= 50%")] = [
                    None if b is not None and b[2] * b[3] >= 0.5 * im.width * im.height else b
                    for im, b in zip(images, boxes)]
        catalog_style = [looks_like_catalog_photo(im) for im in shop_images], \
            [looks_like_catalog_photo(im) for im in clean_images]
        print(json.dumps({"set": "rule", "catalog_style_share_shopper": round(float(np.mean(catalog_style[0])), 4),
                          "catalog_style_share_clean": round(float(np.mean(catalog_style[1])), 4)})
              if args.json else f"catalog-style frames: shopper {np.mean(catalog_style[0]):.3f}, clean "
                                f"{np.mean(catalog_style[1]):.3f}", flush=True)
    category_of = {r.product_id: r.category for r in rows}

    models = {} if args.no_pretrained else {"pretrained": lambda: build_model(ModelConfig())}
    for path in args.checkpoint:
        models[f"checkpoint {path}"] = lambda path=path: build_model(checkpoint=path)
    if not args.json:
        print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads; gallery {len(rows)} images of "
              f"{len({r.product_id for r in rows})} products; {len(scenes)} shopper photos, {len(clean)} clean queries")
        print(f"{'model':<34} {'set':<8} {'method':<60} {'R@1':>6} {'R@5':>6} {'R@10':>6}")
    results = []
    for model_name, make in models.items():
        embedder = Embedder(make(), device="cpu")
        gallery = gallery_vectors(embedder, rows, args)
        gallery_products = [r.product_id for r in rows]
        variants = [("shopper", "whole frame", shop_images, [None] * len(scenes), shop_truth),
                    *[("shopper", f"crop: {n}", shop_images, shop_boxes[n], shop_truth) for n in detectors],
                    ("shopper", "crop: true box (oracle)", shop_images, oracle_boxes, shop_truth),
                    *[(set_name, name, crops, [None] * len(crops), shop_truth if set_name == "shopper" else clean_truth)
                      for (set_name, name), crops in matted.items()],
                    ("clean", "whole frame", clean_images, [None] * len(clean), clean_truth),
                    *[("clean", f"crop: {n}", clean_images, clean_boxes[n], clean_truth) for n in detectors],
                    *[(set_name, f"crop: {trained_name}, {rule}", shop_images if set_name == "shopper" else
                       clean_images, boxes, shop_truth if set_name == "shopper" else clean_truth)
                      for (set_name, rule), boxes in rules.items()]]
        blended = None
        if args.gallery_composites > 0 and trained_name is not None:
            crops, owners = composite_gallery_crops(args.demo_dir, args.cutouts_dir, list(dict.fromkeys(
                gallery_products)), args.gallery_composites, args.seed, detectors[trained_name], args.workers)
            blended = blend_gallery(gallery, gallery_products, embedder.embed_images(crops, batch_size=32), owners,
                                    args.gallery_blend)
        probe = fit_category_probe(gallery, [r.category for r in rows])
        gallery_route = np.sqrt(args.route_weight) * probe.routing_columns([r.category for r in rows])
        for set_name, method, images, boxes, truth in variants:
            if args.only and not any(part in method for part in args.only):
                continue
            vecs = embed_crops(embedder, images, boxes)
            recall = product_recall(vecs, truth, gallery, gallery_products, KS)
            report(results, args, model_name, set_name, method, len(images), recall)
            if blended is not None:
                report(results, args, model_name, set_name, f"{method} | gallery + {args.gallery_composites} "
                       f"composites per product (blend {args.gallery_blend})", len(images),
                       product_recall(vecs, truth, blended, gallery_products, KS))
            if method == f"crop: {trained_name}" or method == "whole frame":
                # category routing as a soft filter: [q, sqrt(w) p(c|q)] . [g, sqrt(w) onehot(c_g)] = q.g + w p(c_g|q)
                probs = probe.probabilities(vecs)
                routed = product_recall(np.hstack([vecs, np.sqrt(args.route_weight) * probs]), truth,
                                        np.hstack([gallery, gallery_route]), gallery_products, KS)
                accuracy = float(np.mean([probe.categories[i] == category_of[t]
                                          for i, t in zip(probs.argmax(axis=1), truth)]))
                report(results, args, model_name, set_name, f"{method} + category routing (w={args.route_weight})",
                       len(images), routed, {"category_accuracy": round(accuracy, 4)})
        if model_name == "pretrained" or len(models) == 1:
            forward = forward_seconds(embedder)
            for name, seconds in timing.items():
                row = {"method": name, "set": "timing", "ms_per_detection": round(seconds * 1000, 2),
                       "ms_per_embedding_forward": round(forward * 1000, 2), "ratio": round(seconds / forward, 3),
                       "threads": torch.get_num_threads()}
                print(json.dumps(row) if args.json else
                      f"localisation {name}: {seconds * 1000:.1f} ms vs one embedding forward {forward * 1000:.1f} ms "
                      f"= {seconds / forward:.2f}x", flush=True)


if __name__ == "__main__":
    main()
