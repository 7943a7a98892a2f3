"""Shared fixtures: a small synthetic product catalog (drawn shapes), the real model, a built generation."""

from __future__ import annotations

import csv
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from models import Embedder, ModelConfig, build_model

COLOURS = [(200, 30, 30), (30, 160, 40), (30, 60, 200), (220, 180, 20), (150, 40, 170), (20, 170, 170)]
SHAPES = ["circle", "square", "triangle", "star", "bars", "ring"]


def draw_product(product: int, variant: int, size: int = 160) -> Image.Image:
    """One photo of product ``product``: its own shape and colour, seen with a variant-specific pose and backdrop."""
    rng = random.Random(product * 1000 + variant)
    colour = COLOURS[product % len(COLOURS)]
    shape = SHAPES[(product // len(COLOURS) + product) % len(SHAPES)]
    grey = rng.randint(215, 255)
    image = Image.new("RGB", (size, size), (grey, grey, rng.randint(215, 255)))
    draw = ImageDraw.Draw(image)
    cx, cy = size / 2 + rng.uniform(-12, 12), size / 2 + rng.uniform(-12, 12)
    r = size * rng.uniform(0.28, 0.36)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "star":
        points = [(cx + (r if i % 2 == 0 else r / 2.5) * math.cos(i * math.pi / 5 - math.pi / 2),
                   cy + (r if i % 2 == 0 else r / 2.5) * math.sin(i * math.pi / 5 - math.pi / 2)) for i in range(10)]
        draw.polygon(points, fill=colour)
    elif shape == "bars":
        for j in range(4):
            x = cx - r + j * r / 1.6
            draw.rectangle([x, cy - r, x + r / 4, cy + r], fill=colour)
    else:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=int(r / 3))
    return image.rotate(rng.uniform(-15, 15), fillcolor=(grey, grey, grey))


PRODUCTS = 8
IMAGES_PER_PRODUCT = 3
CATEGORIES = ["chairs", "tables"]


def write_catalog(root: Path, products: int = PRODUCTS, images: int = IMAGES_PER_PRODUCT) -> Path:
    """A CSV catalog of drawn products; titles name shape and colour so keyword search has something to find."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    path = root / "catalog.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "product_id", "title", "category", "image", "brand"])
        for p in range(products):
            shape = SHAPES[(p // len(COLOURS) + p) % len(SHAPES)]
            for v in range(images):
                name = f"images/p{p}-v{v}.jpg"
                draw_product(p, v).save(root / name, quality=92)
                writer.writerow([f"p{p}-v{v}", f"p{p}", f"{shape} lamp number {p}", CATEGORIES[p % 2], name,
                                 "acme" if p < 4 else "globex"])
    return path


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real default model (offline ImageNet EfficientNet-Lite0) at a small input size, on the CPU."""
    return Embedder(build_model(ModelConfig(image_size=128)), device="cpu")


@pytest.fixture(scope="session")
def catalog_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_catalog(tmp_path_factory.mktemp("catalog"))


@pytest.fixture(scope="session")
def built_data_dir(tmp_path_factory: pytest.TempPathFactory, catalog_path: Path, embedder: Embedder) -> Path:
    """A data dir with one published generation of the synthetic catalog (shared, treat as read-only)."""
    from indexer import build_generation

    data_dir = tmp_path_factory.mktemp("data")
    build_generation(catalog_path, data_dir, embedder, workers=0, progress=False)
    return data_dir


@pytest.fixture(scope="session", autouse=True)
def runtime_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One export cache for the whole run (services in tests default to LOOKALIKE_RUNTIME=auto, i.e. OpenVINO):
    each model is exported once, not once per test data dir."""
    path = tmp_path_factory.mktemp("runtime-cache")
    # Services in tests compile the localiser for the shapes they meet, not all nine at each start
    # (tests/models/test_localiser_runtime.py checks the warm-up itself).
    env = {"LOOKALIKE_RUNTIME_CACHE_DIR": str(path), "LOOKALIKE_LOCALISER_WARM_SHAPES": "false"}
    previous = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield path
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def product_cutout(product: int, variant: int, size: int = 160) -> Image.Image:
    """A drawn product alone (RGBA, transparent around it): the tests' stand-in for a rendered cut-out."""
    image = draw_product(product, variant, size).convert("RGBA")
    arr = np.asarray(image).copy()
    light = arr[..., :3].min(axis=2) > 200  # the backdrop is light grey; the shapes are saturated
    arr[..., 3] = np.where(light, 0, 255)
    return Image.fromarray(arr, "RGBA")


def busy_background(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A cluttered, photo-like backdrop: smooth random colour blobs with noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
    noisy = base + rng.normal(0, 12, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def tiny_localiser_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A localiser trained on the fly (seconds) on drawn products pasted onto busy backdrops; tests never use the
    packaged weights."""
    from models.localiser import LocaliserConfig, save_localiser
    from training.localiser import LocaliserTrainConfig, train_localiser

    cutouts = [product_cutout(p, v) for p in range(PRODUCTS) for v in range(IMAGES_PER_PRODUCT)]
    backgrounds = [busy_background(s) for s in range(8)]
    model, summary = train_localiser(backgrounds, cutouts, LocaliserConfig(image_size=128),
                                     LocaliserTrainConfig(scenes=192, iterations=100, batch_size=32, warmup=10,
                                                                          threads=1))
    return save_localiser(model, tmp_path_factory.mktemp("localiser") / "tiny.pt", summary)


@pytest.fixture(scope="session")
def tiny_mask_localiser_path(tmp_path_factory: pytest.TempPathFactory, tiny_localiser_path: Path) -> Path:
    """The tiny localiser with a mask head trained on the fly (seconds) on the same kind of scenes."""
    from models.localiser import LocaliserConfig, LocaliserNet, load_localiser, save_localiser
    from training.mask_head import MaskTrainConfig, train_mask_head

    base = load_localiser(tiny_localiser_path)
    model = LocaliserNet(LocaliserConfig(**{**base.config.model_dump(), "mask_channels": 16}))
    model.load_state_dict(base.state_dict(), strict=False)
    cutouts = [product_cutout(p, v) for p in range(PRODUCTS) for v in range(IMAGES_PER_PRODUCT)]
    backgrounds = [busy_background(s) for s in range(8)]
    summary = train_mask_head(model, backgrounds, cutouts, MaskTrainConfig(scenes=128, iterations=80, batch_size=16,
                                                                          lr=3e-2, warmup=5, threads=1))
    return save_localiser(model, tmp_path_factory.mktemp("localiser") / "tiny-mask.pt", summary)
