"""Shopper-photo composites: product cut-outs pasted onto real photographs, with the exact box of each.

One scene generator serves three jobs: the shopper-photo benchmark's queries (bench/shopper_quality.py), the
object localiser's training data (exact boxes for free) and the composite augmentation of embedding training.
A cut-out is an RGBA image whose alpha is the object's mask (the demo renderer draws them, see
``demo.cutouts``). Backgrounds are photographs: by default the photographic wallpapers of Debian's
``plasma-workspace-wallpapers`` (LGPL-3 / CC-BY-SA-4.0, see the README), split into a training and a
benchmark half so that a model is never scored on the backgrounds it was trained on.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

__all__ = [
    "BENCH_WALLPAPERS", "TRAIN_WALLPAPERS", "WALLPAPER_DIR", "Placed", "SceneConfig", "background_variants",
    "compose_scene", "degrade", "load_backgrounds", "non_benchmark_wallpapers", "random_frame", "wallpaper_paths",
]

WALLPAPER_DIR = Path("/usr/share/wallpapers")
# plasma-workspace-wallpapers 5.27: the benchmark takes six of its eleven photographs; training takes the other
# five photographs and a few drawings and abstract images (variety helps, and none of them is benchmarked).
BENCH_WALLPAPERS = ("ColorfulCups", "EveningGlow", "FallenLeaf", "OneStandsOut", "Path", "summer_1am")
TRAIN_WALLPAPERS = ("BytheWater", "ColdRipple", "DarkestHour", "Grey", "Kite", "Autumn", "Flow", "Honeywave",
                    "PastelHills", "Shell", "Volna")


class BackgroundsMissing(FileNotFoundError):
    """The background photographs are not installed."""


def wallpaper_paths(names: Sequence[str], directory: Path = WALLPAPER_DIR, suffixes: Sequence[str] = (".jpg",)
                    ) -> list[Path]:
    """One image file per named wallpaper (its largest landscape image of ``suffixes``); raises when none is
    installed."""
    found = []
    for name in names:
        images = sorted(p for p in (directory / name / "contents" / "images").glob("*") if p.suffix in suffixes)
        landscape = [p for p in images if _landscape(p.stem)]
        if landscape or images:
            found.append(max(landscape or images, key=lambda p: _pixels(p.stem)))
    if not found:
        raise BackgroundsMissing(f"no background photographs under {directory}: apt-get install "
                                 "plasma-workspace-wallpapers (or pass your own photos)")
    return found


def non_benchmark_wallpapers(directory: Path = WALLPAPER_DIR) -> list[Path]:
    """Every installed wallpaper except the benchmark's (JPEG or PNG; photographs, drawings and abstract art):
    the widest variety of backgrounds a model may train on without seeing the benchmark's."""
    names = sorted(d.name for d in directory.glob("*") if d.is_dir() and d.name not in BENCH_WALLPAPERS)
    return wallpaper_paths(names, directory, suffixes=(".jpg", ".png"))


def background_variants(rng: np.random.Generator, backgrounds: Sequence[Image.Image], count: int,
                        size: int = 640) -> list[Image.Image]:
    """``count`` more backgrounds made from ``backgrounds``: 2 x 2 mosaics of random crops, each with its hue
    turned and its contrast changed at random (a segmentation head must not learn a few photos by heart)."""
    out = []
    half = size // 2
    for _ in range(count):
        tile = Image.new("RGB", (size, size))
        for k in range(4):
            part = random_frame(rng, backgrounds[int(rng.integers(len(backgrounds)))], half, half)
            hsv = np.asarray(part.convert("HSV"), dtype=np.int16)
            hsv[..., 0] = (hsv[..., 0] + int(rng.integers(256))) % 256
            part = Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
            arr = np.asarray(part, dtype=np.float32)
            arr = (arr - arr.mean()) * rng.uniform(0.6, 1.4) + arr.mean() * rng.uniform(0.7, 1.3)
            tile.paste(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), ((k % 2) * half, (k // 2) * half))
        out.append(tile)
    return out


def _pixels(stem: str) -> int:
    w, _, h = stem.partition("x")
    return int(w) * int(h) if w.isdigit() and h.isdigit() else 0


def _landscape(stem: str) -> bool:
    w, _, h = stem.partition("x")
    return w.isdigit() and h.isdigit() and int(w) >= int(h)


def load_backgrounds(paths: Sequence[Path], max_side: int = 1280) -> list[Image.Image]:
    """Decode background photos once, shrunk to ``max_side`` (scenes take random crops of them)."""
    out = []
    for path in paths:
        with Image.open(path) as img:
            img.draft("RGB", (max_side, max_side))
            img = img.convert("RGB")
            img.thumbnail((max_side, max_side))
            out.append(img)
    return out


@dataclass(frozen=True)
class Placed:
    """One pasted object: its visible box (x, y, w, h in frame pixels), the share of it inside the frame, which
    cut-out it came from, and its exact coverage: ``alpha`` (the resized cut-out's alpha, uint8) pasted at
    ``offset`` (x, y of its top-left corner in the frame, possibly negative); :meth:`mask` draws it in the frame."""

    box: tuple[float, float, float, float]
    visible: float
    source: int
    offset: tuple[int, int] = (0, 0)
    alpha: np.ndarray | None = field(default=None, compare=False, repr=False)

    def mask(self, size: tuple[int, int]) -> np.ndarray:
        """The object's coverage in a frame of ``size`` (width, height) as float32 in [0, 1] (what was pasted
        there, before any later object covered it)."""
        W, H = size
        out = np.zeros((H, W), dtype=np.float32)
        if self.alpha is None:
            return out
        x, y = self.offset
        h, w = self.alpha.shape
        fx0, fy0, fx1, fy1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
        if fx1 > fx0 and fy1 > fy0:
            out[fy0:fy1, fx0:fx1] = self.alpha[fy0 - y:fy1 - y, fx0 - x:fx1 - x] / 255.0
        return out


@dataclass(frozen=True)
class SceneConfig:
    """How a scene is drawn; the defaults are the shopper-photo benchmark's.

    ``scale``: the object's extent in its dominant direction, as a share of the frame's (20-70%).
    ``cut_prob``: chance the main object runs over a frame edge. ``second_prob``: chance of a smaller second product.
    """

    long_side: int = 640
    scale: tuple[float, float] = (0.2, 0.7)
    cut_prob: float = 0.2
    second_prob: float = 0.3
    second_scale: tuple[float, float] = (0.4, 0.8)  # relative to the main object
    degrade: bool = True
    aspect: float | None = None  # width/height; None: a random photo shape (4:3, 3:2, 1:1, some portrait)


def random_frame(rng: np.random.Generator, background: Image.Image, width: int, height: int) -> Image.Image:
    """A random crop of the photo at a random zoom, resized to the frame, sometimes mirrored."""
    bw, bh = background.size
    zoom = rng.uniform(0.35, 1.0)
    cw = min(bw, max(16, int(round(bw * zoom))))
    ch = min(bh, max(16, int(round(cw * height / width))))
    cw = min(cw, int(round(ch * width / height)))
    x = int(rng.integers(0, bw - cw + 1))
    y = int(rng.integers(0, bh - ch + 1))
    frame = background.crop((x, y, x + cw, y + ch)).resize((width, height), Image.Resampling.BILINEAR)
    return frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else frame


def _tight(cutout: Image.Image) -> Image.Image:
    """The cut-out cropped to its alpha's bounding box."""
    rgba = cutout.convert("RGBA")
    bbox = rgba.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    return rgba.crop(bbox) if bbox else rgba


def _paste(rng: np.random.Generator, frame: Image.Image, cutout: Image.Image, extent: float, cut: bool,
           source: int) -> Placed:
    """Paste ``cutout`` so it spans ``extent`` of the frame in its dominant direction; return its placement, whose
    box is that of its pixels inside the frame."""
    W, H = frame.size
    obj = _tight(cutout)
    ow, oh = obj.size
    factor = extent * min(W / ow, H / oh)
    w, h = max(2, int(round(ow * factor))), max(2, int(round(oh * factor)))
    obj = obj.resize((w, h), Image.Resampling.LANCZOS)
    if cut:  # run 15-40% of the object over one edge
        over = rng.uniform(0.15, 0.4)
        side = int(rng.integers(4))
        x = int(rng.integers(0, max(1, W - w + 1)))
        y = int(rng.integers(0, max(1, H - h + 1)))
        if side == 0:
            x = -int(over * w)
        elif side == 1:
            x = W - w + int(over * w)
        elif side == 2:
            y = -int(over * h)
        else:
            y = H - h + int(over * h)
    else:
        x = int(rng.integers(min(0, W - w), max(0, W - w) + 1))
        y = int(rng.integers(min(0, H - h), max(0, H - h) + 1))
    frame.paste(obj, (x, y), obj)
    alpha = np.asarray(obj.getchannel("A")) > 8
    in_frame = alpha[max(0, -y):max(0, H - y), max(0, -x):max(0, W - x)]  # the part of the object inside the frame
    inside = in_frame.sum() / max(1, alpha.sum())
    return Placed(_visible_box(in_frame, max(0, x), max(0, y)), float(inside), source, (x, y),
                  np.asarray(obj.getchannel("A")))


def _visible_box(in_frame: np.ndarray, x: int, y: int) -> tuple[float, float, float, float]:
    """The box (x, y, w, h in frame pixels) of the object's pixels inside the frame (``in_frame``, whose top-left
    is at ``x``, ``y``): for an object over an edge it is narrower on the other axis too than the whole object's
    box clipped to the frame (a chair cut at its legs). Empty (w = h = 0) when no pixel is inside."""
    ys, xs = np.nonzero(in_frame)
    if len(xs) == 0:
        return float(x), float(y), 0.0, 0.0
    return (float(x + xs.min()), float(y + ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min()))


def degrade(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """A phone camera's faults: blur, colour cast and exposure, sensor noise, JPEG."""
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.6))))
    arr = np.asarray(image, dtype=np.float32)
    cast = rng.uniform(0.85, 1.15, 3) * rng.uniform(0.8, 1.2)
    arr = arr * cast + rng.normal(0, rng.uniform(0, 8), arr.shape)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(40, 91)))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def compose_scene(rng: np.random.Generator, backgrounds: Sequence[Image.Image], main: Image.Image,
                  others: Sequence[Image.Image] = (), config: SceneConfig = SceneConfig()
                  ) -> tuple[Image.Image, list[Placed]]:
    """A shopper's photo of ``main`` (an RGBA cut-out): the first placed object is ``main``, any second one is a
    smaller product from ``others`` pasted behind it. Boxes are exact (from the alpha masks)."""
    if config.aspect is None:
        portrait = rng.random() < 0.35
        aspect = float(rng.choice([4 / 3, 3 / 2, 1.0]))
        aspect = 1 / aspect if portrait else aspect
    else:
        aspect = config.aspect
    long_side = config.long_side
    width, height = ((long_side, int(round(long_side / aspect))) if aspect >= 1
                     else (int(round(long_side * aspect)), long_side))
    frame = random_frame(rng, backgrounds[int(rng.integers(len(backgrounds)))], width, height)
    extent = float(rng.uniform(*config.scale))
    placed = []
    if others and rng.random() < config.second_prob:
        j = int(rng.integers(len(others)))
        second_extent = extent * float(rng.uniform(*config.second_scale))
        placed.append(_paste(rng, frame, others[j], second_extent, cut=False, source=j + 1))
    main_placed = _paste(rng, frame, main, extent, cut=rng.random() < config.cut_prob, source=0)
    placed.insert(0, main_placed)
    if config.degrade:
        frame = degrade(rng, frame)
    return frame, placed

