"""Composite augmentation for embedding training: a catalog image's cut-out pasted onto a photo, then cropped.

A shopper's query reaches the embedding as the localiser's crop of a photo (``models.localiser.object_crop``):
the product at catalog framing, but over a busy background, blurred, noised and colour-cast. Training on such
crops of the catalog's own images (positives: the product's other, clean catalog images) teaches the embedding to
ignore what is around the product. The scene comes from :func:`training.composite.compose_scene` on the
*training* half of the photographs; the box is jittered as a localiser's would be.

Cut-outs are looked up beside the catalog: the image ``<catalog root>/<rel>.jpg`` has its cut-out at
``<cutouts root>/<rel>.png`` (``demo.cutouts`` renders the demo catalog's that way). Images without a cut-out
are always used as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models.localiser import object_crop
from training.composite import SceneConfig, compose_scene

__all__ = ["CompositeAugment", "cutout_paths"]

# The training scenes: the object at 25-85% of a 384 px frame (the crop is what matters), sometimes over an edge.
TRAIN_SCENE = SceneConfig(long_side=384, scale=(0.25, 0.85), cut_prob=0.1, second_prob=0.0)


def cutout_paths(images: Sequence[Path], catalog_root: Path, cutouts_root: Path) -> dict[Path, Path]:
    """Image path -> its RGBA cut-out, for the images that have one (``<cutouts_root>/<rel>.png``)."""
    found = {}
    for image in images:
        try:
            rel = Path(image).resolve().relative_to(Path(catalog_root).resolve())
        except ValueError:
            continue
        cutout = Path(cutouts_root) / rel.with_suffix(".png")
        if cutout.is_file():
            found[Path(image)] = cutout
    return found


@dataclass
class CompositeAugment:
    """``__call__(path, rng)`` gives a composite crop of the image's cut-out (with probability ``prob``), else
    None (the caller then uses the image as it is)."""

    cutouts: dict[Path, Path]
    backgrounds: Sequence[Image.Image]
    prob: float = 0.5
    box_jitter: float = 0.1
    scene: SceneConfig = TRAIN_SCENE

    def __call__(self, path: Path, rng: np.random.Generator) -> Image.Image | None:
        cutout_path = self.cutouts.get(Path(path))
        if cutout_path is None or not self.backgrounds or rng.random() >= self.prob:
            return None
        with Image.open(cutout_path) as handle:
            cutout = handle.convert("RGBA")
        scene, placed = compose_scene(rng, self.backgrounds, cutout, (), self.scene)
        return object_crop(scene, self._jitter(rng, placed[0].box, scene.size))

    def _jitter(self, rng: np.random.Generator, box: tuple[float, float, float, float],
                size: tuple[int, int]) -> tuple[float, float, float, float]:
        """The true box moved and resized by up to ``box_jitter`` of its size, as a localiser's box would be."""
        x, y, w, h = box
        j = self.box_jitter
        dx, dy, dw, dh = rng.uniform(-j, j, 4)
        w2, h2 = max(2.0, w * (1 + dw)), max(2.0, h * (1 + dh))
        x2 = float(np.clip(x + dx * w, 0, size[0] - 2))
        y2 = float(np.clip(y + dy * h, 0, size[1] - 2))
        return x2, y2, min(w2, size[0] - x2), min(h2, size[1] - y2)
