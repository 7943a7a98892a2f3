"""`lookalike train-detector`: train the query localiser on synthetic composites of the demo catalog."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from cli.common import fail, settings_of
from models.localiser import PACKAGED_WEIGHTS

detector_app = typer.Typer(add_completion=False)

# options that train-detector and train-mask share
CutoutsDir = Annotated[Path, typer.Option(help="where the demo cut-outs are rendered (reused)")]
Products = Annotated[int, typer.Option(help="products whose cut-outs train it (spread over the catalog)")]
Scenes = Annotated[int, typer.Option(help="distinct training composites")]
Iterations = Annotated[int, typer.Option(help="optimiser steps at most")]
TimeBudget = Annotated[float, typer.Option(help="seconds of optimiser steps at most")]
Workers = Annotated[int, typer.Option(help="render processes for the cut-outs")]
Threads = Annotated[int, typer.Option(help="torch threads while training (1 is fastest on a busy CPU)")]
Variants = Annotated[int, typer.Option(help="extra backgrounds: mosaics of every non-benchmark wallpaper, hue and "
                                          "contrast changed")]
HoldOut = Annotated[Path | None, typer.Option(help="a training run's split.json: its test products never train it "
                                                   "(so the shopper bench's held-out rows stay held out)")]


def _composite_material(ctx: typer.Context, cutouts_dir: Path, products: int, workers: int,
                        excluded: frozenset[str] = frozenset()) -> tuple[list, list, list, list]:
    """Backgrounds (training, benchmark) and cut-outs (training, check: every tenth product) for composites of
    ``products`` demo products spread over the catalog, leaving out ``excluded``; renders missing cut-outs."""
    import numpy as np
    from PIL import Image

    from demo.cutouts import render_cutouts
    from indexer import read_catalog
    from training.composite import (BENCH_WALLPAPERS, TRAIN_WALLPAPERS, BackgroundsMissing, load_backgrounds,
                                    wallpaper_paths)

    settings = settings_of(ctx)
    if not (settings.demo_dir / "demo_manifest.json").exists():
        raise fail(f"no demo catalog at {settings.demo_dir}: run `lookalike demo` first")
    try:
        train_bg = load_backgrounds(wallpaper_paths(TRAIN_WALLPAPERS), max_side=640)
        check_bg = load_backgrounds(wallpaper_paths(BENCH_WALLPAPERS), max_side=640)
    except BackgroundsMissing as exc:
        raise fail(str(exc)) from None
    slugs = sorted({row.product_id for row in read_catalog(settings.demo_dir / "catalog.csv")} - excluded)
    picks = sorted({slugs[i] for i in np.linspace(0, len(slugs) - 1, min(products, len(slugs))).round().astype(int)})
    typer.echo(f"rendering cut-outs of {len(picks)} products into {cutouts_dir} (reused when present)"
               + (f"; {len(excluded)} held-out products left out" if excluded else ""))
    rendered = render_cutouts(settings.demo_dir, cutouts_dir, kind="images", per_item=1, products=set(picks),
                              workers=workers)
    names = sorted(rendered)
    held = set(names[::10])  # every tenth product checks the result on the benchmark's backgrounds
    train_cut = [Image.open(rendered[n][0]).convert("RGBA") for n in names if n not in held]
    check_cut = [Image.open(rendered[n][0]).convert("RGBA") for n in names if n in held]
    return train_bg, check_bg, train_cut, check_cut


def _wide_backgrounds(seed: int, variants: int) -> list:
    """Every non-benchmark wallpaper (photographs, drawings, abstract art) plus ``variants`` hue- and
    contrast-changed mosaics of them: the widest variety of backgrounds that leaves the benchmark's out."""
    import numpy as np

    from training.composite import background_variants, load_backgrounds, non_benchmark_wallpapers

    backgrounds = load_backgrounds(non_benchmark_wallpapers(), max_side=640)
    return backgrounds + background_variants(np.random.default_rng([seed, 5]), backgrounds, variants)


@detector_app.command("train-detector")
def train_detector(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="weights file to write")] = PACKAGED_WEIGHTS,
    cutouts_dir: CutoutsDir = Path("data/cutouts"),
    products: Products = 400,
    scenes: Scenes = 6000,
    iterations: Iterations = 6000,
    time_budget: TimeBudget = 1500.0,
    image_size: Annotated[int, typer.Option(help="the photo's longer side when detecting")] = 160,
    holdout: HoldOut = None,
    wide_backgrounds: Annotated[bool, typer.Option(help="train over every non-benchmark wallpaper plus --variants "
                                                        "mosaics, not only the training half of the photographs")
                                ] = True,
    variants: Variants = 200,
    workers: Workers = 2,
    threads: Threads = 1,
    seed: int = 0,
) -> None:
    """Train the class-agnostic object localiser on demo cut-outs pasted into photographs (offline; minutes)."""
    import numpy as np

    from models.localiser import ActivationLocaliser, Localiser, LocaliserConfig, save_localiser
    from training.composite import SceneConfig, compose_scene
    from training.localiser import LocaliserTrainConfig, evaluate_localiser, train_localiser

    started = time.perf_counter()
    excluded = frozenset(json.loads(holdout.read_text())["test"]) if holdout else frozenset()
    train_bg, check_bg, train_cut, check_cut = _composite_material(ctx, cutouts_dir, products, workers, excluded)
    if wide_backgrounds:
        train_bg = _wide_backgrounds(seed, variants)
    config = LocaliserTrainConfig(scenes=scenes, iterations=iterations, time_budget_s=time_budget, seed=seed,
                                  threads=threads)
    model_config = LocaliserConfig(image_size=image_size)
    typer.echo(f"training on {scenes} composites of {len(train_cut)} products (at most {iterations} steps, "
               f"{time_budget:.0f} s)")
    with typer.progressbar(length=iterations, label="train-detector") as bar:
        model, summary = train_localiser(train_bg, train_cut, model_config, config,
                                         progress=lambda step, loss: bar.update(1))
    check = []
    for i in range(200):
        rng = np.random.default_rng([seed, 7, i])
        image, placed = compose_scene(rng, check_bg, check_cut[i % len(check_cut)], check_cut, SceneConfig())
        check.append((image, placed[0].box))
    figures = {"localiser": evaluate_localiser(Localiser(model), check),
               "activation_baseline": evaluate_localiser(ActivationLocaliser(), check)}
    summary.update({"figures": figures, "check_scenes": len(check), "held_out_products": len(check_cut),
                    "excluded_products": len(excluded), "backgrounds": len(train_bg),
                    "wide_backgrounds": wide_backgrounds, "total_seconds": round(time.perf_counter() - started, 1)})
    save_localiser(model, out, summary)
    (out.with_suffix(".json")).write_text(json.dumps(summary, indent=2) + "\n")
    typer.echo(json.dumps(figures))
    typer.echo(f"wrote {out} ({out.stat().st_size // 1024} KiB) and {out.with_suffix('.json')}")


@detector_app.command("train-mask")
def train_mask(
    ctx: typer.Context,
    localiser: Annotated[Path, typer.Option(help="the trained localiser to add a mask head to")] = PACKAGED_WEIGHTS,
    out: Annotated[Path, typer.Option(help="weights file to write (the localiser with its mask head); serve it with "
                                           "LOCALISER_WEIGHTS and MATTE_OBJECTS=true")] = Path("data/localiser-mask.pt"),
    cutouts_dir: CutoutsDir = Path("data/cutouts"),
    products: Products = 400,
    holdout: HoldOut = None,
    scenes: Scenes = 1000,
    iterations: Iterations = 1000,
    time_budget: TimeBudget = 900.0,
    channels: Annotated[int, typer.Option(help="the LR-ASPP head's width")] = 64,
    variants: Variants = 200,
    workers: Workers = 2,
    threads: Threads = 1,
    seed: int = 0,
) -> None:
    """Add a foreground mask head to the localiser and train it on demo cut-outs pasted into photographs (the
    detector is unchanged; the query path mattes the found object onto white with it). It writes a file of its
    own, not the packaged weights: a mask head in the served weights runs on every query (0.70x of a forward
    against 0.46x), even with MATTE_OBJECTS off."""
    import numpy as np
    from PIL import Image

    from models.localiser import Localiser, LocaliserConfig, LocaliserNet, load_localiser, save_localiser
    from training.composite import SceneConfig, compose_scene
    from training.mask_head import MaskTrainConfig, mask_iou, scene_mask, train_mask_head

    if not localiser.exists():
        raise fail(f"no localiser at {localiser}: run `lookalike train-detector` first")
    started = time.perf_counter()
    excluded = frozenset(json.loads(holdout.read_text())["test"]) if holdout else frozenset()
    train_bg, check_bg, train_cut, check_cut = _composite_material(ctx, cutouts_dir, products, workers, excluded)
    mask_bg = _wide_backgrounds(seed, variants)
    base = load_localiser(localiser)
    model = LocaliserNet(LocaliserConfig(**{**base.config.model_dump(), "mask_channels": channels}))
    model.load_state_dict({k: v for k, v in base.state_dict().items() if not k.startswith("mask_head.")},
                          strict=False)
    config = MaskTrainConfig(scenes=scenes, iterations=iterations, time_budget_s=time_budget, seed=seed,
                             threads=threads)
    typer.echo(f"training the mask head on {scenes} composites of {len(train_cut)} products (at most {iterations} "
               f"steps, {time_budget:.0f} s)")
    with typer.progressbar(length=iterations, label="train-mask") as bar:
        summary = train_mask_head(model, mask_bg, train_cut, config, progress=lambda step, loss: bar.update(1))
    found = Localiser(model)
    figures = {}
    for name, backgrounds in (("benchmark_backgrounds", check_bg), ("training_backgrounds", train_bg)):
        ious = []
        for i in range(100):
            rng = np.random.default_rng([seed, 11, i])
            image, placed = compose_scene(rng, backgrounds, check_cut[i % len(check_cut)], check_cut, SceneConfig())
            grid = found.locate(image).mask
            predicted = np.asarray(Image.fromarray(grid, "F").resize(image.size, Image.Resampling.BILINEAR))
            ious.append(mask_iou(predicted, scene_mask(image, placed)))
        figures[name] = {"mask_iou": round(float(np.mean(ious)), 4), "scenes": len(ious)}
    summary.update({"figures": figures, "held_out_products": len(check_cut), "train_products": len(train_cut),
                    "backgrounds": len(mask_bg),
                    "excluded_products": len(excluded), "total_seconds": round(time.perf_counter() - started, 1)})
    recipe_path = localiser.with_suffix(".json")
    recipe = json.loads(recipe_path.read_text()) if recipe_path.exists() else {}
    recipe["mask_head"] = summary
    save_localiser(model, out, recipe)
    out.with_suffix(".json").write_text(json.dumps(recipe, indent=2) + "\n")
    typer.echo(json.dumps(figures))
    typer.echo(f"wrote {out} ({out.stat().st_size // 1024} KiB) and {out.with_suffix('.json')}")
