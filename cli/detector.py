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


@detector_app.command("train-detector")
def train_detector(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="weights file to write")] = PACKAGED_WEIGHTS,
    cutouts_dir: Annotated[Path, typer.Option(help="where the demo cut-outs are rendered (reused)")] = Path("data/cutouts"),
    products: Annotated[int, typer.Option(help="products whose cut-outs train it (spread over the catalog)")] = 400,
    scenes: Annotated[int, typer.Option(help="distinct training composites")] = 800,
    iterations: Annotated[int, typer.Option(help="optimiser steps at most")] = 600,
    time_budget: Annotated[float, typer.Option(help="seconds of optimiser steps at most")] = 600.0,
    image_size: Annotated[int, typer.Option(help="the photo's longer side when detecting")] = 160,
    workers: Annotated[int, typer.Option(help="render processes for the cut-outs")] = 2,
    threads: Annotated[int, typer.Option(help="torch threads while training (1 is fastest on a busy CPU)")] = 1,
    seed: int = 0,
) -> None:
    """Train the class-agnostic object localiser on demo cut-outs pasted into photographs (offline; minutes)."""
    import numpy as np
    from PIL import Image

    from demo.cutouts import render_cutouts
    from indexer import read_catalog
    from models.localiser import ActivationLocaliser, Localiser, LocaliserConfig, save_localiser
    from training.composite import (BENCH_WALLPAPERS, TRAIN_WALLPAPERS, BackgroundsMissing, SceneConfig,
                                    compose_scene, load_backgrounds, wallpaper_paths)
    from training.localiser import LocaliserTrainConfig, evaluate_localiser, train_localiser

    settings = settings_of(ctx)
    manifest = settings.demo_dir / "demo_manifest.json"
    if not manifest.exists():
        raise fail(f"no demo catalog at {settings.demo_dir}: run `lookalike demo` first")
    try:
        train_bg = load_backgrounds(wallpaper_paths(TRAIN_WALLPAPERS), max_side=640)
        check_bg = load_backgrounds(wallpaper_paths(BENCH_WALLPAPERS), max_side=640)
    except BackgroundsMissing as exc:
        raise fail(str(exc)) from None
    started = time.perf_counter()
    slugs = sorted({row.product_id for row in read_catalog(settings.demo_dir / "catalog.csv")})
    picks = sorted({slugs[i] for i in np.linspace(0, len(slugs) - 1, min(products, len(slugs))).round().astype(int)})
    typer.echo(f"rendering cut-outs of {len(picks)} products into {cutouts_dir} (reused when present)")
    rendered = render_cutouts(settings.demo_dir, cutouts_dir, kind="images", per_item=1, products=set(picks),
                              workers=workers)
    names = sorted(rendered)
    held = set(names[::10])  # every tenth product checks the result on the benchmark's backgrounds
    train_cut = [Image.open(rendered[n][0]).convert("RGBA") for n in names if n not in held]
    check_cut = [Image.open(rendered[n][0]).convert("RGBA") for n in names if n in held]
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
                    "total_seconds": round(time.perf_counter() - started, 1)})
    save_localiser(model, out, summary)
    (out.with_suffix(".json")).write_text(json.dumps(summary, indent=2) + "\n")
    typer.echo(json.dumps(figures))
    typer.echo(f"wrote {out} ({out.stat().st_size // 1024} KiB) and {out.with_suffix('.json')}")
