"""Put a found object on the catalog's own backdrop before embedding it.

Catalog images show a product alone on a plain light backdrop (the demo's icons are flattened onto white, the same
way :mod:`models.preprocess` flattens any alpha channel); a crop of a shopper's photo still carries the room behind
the object. Matting the object with its mask onto white and then cropping it like a catalog photo
(:func:`models.localiser.object_crop`) searches it in the catalog's domain.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.localiser import crop_window, object_crop

__all__ = ["WHITE", "box_from_mask", "coarse_mask", "guided_upsample", "mask_box", "mask_peak", "matte",
           "matted_crop"]

WHITE = (255, 255, 255)


def matte(image: Image.Image, mask: np.ndarray, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """``image`` where ``mask`` (H x W, coverage in [0, 1]) is 1, ``background`` where it is 0, blended between."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the image {rgb.shape[:2]}")
    a = np.clip(mask, 0.0, 1.0)[..., None]
    out = rgb * a + np.asarray(background, dtype=np.float32) * (1.0 - a)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


def mask_box(mask: np.ndarray, threshold: float = 0.5) -> tuple[float, float, float, float] | None:
    """The box (x, y, w, h in the mask's pixels) around the pixels at or above ``threshold``; None when none is."""
    ys, xs = np.nonzero(mask >= threshold)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())


def coarse_mask(mask: np.ndarray, long_side: int) -> np.ndarray:
    """``mask`` as a head predicting on a grid of ``long_side`` cells along the longer side would see it: averaged
    down to that grid, then bilinearly up to the mask's size again (the ceiling of a low-resolution mask head)."""
    h, w = mask.shape
    scale = long_side / max(w, h)
    grid = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = Image.fromarray(mask.astype(np.float32), "F").resize(grid, Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def guided_upsample(mask: np.ndarray, image: Image.Image, radius: int = 4, eps: float = 1e-3) -> np.ndarray:
    """``mask`` (any size, coverage in [0, 1]) brought to ``image``'s size with its edges snapped to the photo's:
    He et al.'s guided filter (grey guide) on the bilinearly upsampled mask. A head that predicts on a coarse grid
    draws blurry edges; where the photo has an edge near them, the filter moves them there. Separable box filters,
    so the cost does not grow with ``radius``."""
    w, h = image.size
    guide = torch.from_numpy(np.array(image.convert("L"), dtype=np.float32) / 255.0)[None, None]
    p = F.interpolate(torch.from_numpy(np.array(mask, dtype=np.float32))[None, None], size=(h, w),
                      mode="bilinear", align_corners=False)
    k = 2 * radius + 1

    def box(x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, (k, 1), stride=1, padding=(radius, 0), count_include_pad=False)
        return F.avg_pool2d(x, (1, k), stride=1, padding=(0, radius), count_include_pad=False)

    mean_i, mean_p = box(guide), box(p)
    var_i = box(guide * guide) - mean_i * mean_i
    a = (box(guide * p) - mean_i * mean_p) / (var_i + eps)
    b = mean_p - a * mean_i
    return (box(a) * guide + box(b)).clamp_(0, 1)[0, 0].numpy()


def matted_crop(image: Image.Image, mask: np.ndarray, box: Sequence[float], margin: float = 0.1,
                max_side: int = 320, refine: bool = False, min_peak: float = 0.5) -> Image.Image:
    """The object in ``box`` matted onto white and framed like a catalog photo: :func:`object_crop`'s square,
    where ``mask`` (foreground probability on any grid that covers the whole photo) is resized to the crop,
    optionally snapped to the photo's edges (:func:`guided_upsample`), and used as the matte. The crop is made
    at most ``max_side`` px (the embedder shrinks it further anyway), which bounds the cost. Where the mask holds
    no pixel of at least ``min_peak`` in the square, nothing is matted: the plain crop comes back."""
    left, top, side = crop_window(image.size, box, margin)
    scale = min(1.0, max_side / side)
    crop = object_crop(image, box, margin, fill=WHITE)
    if scale < 1.0:
        crop = crop.resize((max(1, round(side * scale)),) * 2, Image.Resampling.BILINEAR)
    n = crop.width
    # the grid covers the photo: cell centres at ((c + 0.5) W / cols, (r + 0.5) H / rows); sample it at the
    # crop's pixel centres (bilinear, zero outside the photo)
    W, H = image.size
    rows, cols = mask.shape
    centres = (np.arange(n, dtype=np.float32) + 0.5) * (side / n)
    gx = (left + centres) / W * 2 - 1
    gy = (top + centres) / H * 2 - 1
    grid = torch.stack(torch.meshgrid(torch.from_numpy(gy), torch.from_numpy(gx), indexing="ij")[::-1], dim=-1)
    sampled = F.grid_sample(torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None],
                            grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0].numpy()
    if sampled.max() < min_peak:
        return object_crop(image, box, margin) if scale == 1.0 else object_crop(image, box, margin).resize(crop.size)
    alpha = guided_upsample(sampled, crop, radius=max(1, n // 64)) if refine else sampled
    return matte(crop, alpha)


def _window_cells(mask: np.ndarray, size: tuple[int, int], box: Sequence[float], margin: float
                  ) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1): the cells of ``mask`` (a grid over the whole photo of ``size``) that
    :func:`object_crop`'s square for ``box`` covers, clipped to the grid (empty where it covers none)."""
    W, H = size
    rows, cols = mask.shape
    left, top, side = crop_window(size, box, margin)
    r0, r1 = max(0, int(top * rows / H)), min(rows, int(np.ceil((top + side) * rows / H)))
    c0, c1 = max(0, int(left * cols / W)), min(cols, int(np.ceil((left + side) * cols / W)))
    return r0, r1, c0, c1


def mask_peak(mask: np.ndarray, size: tuple[int, int], box: Sequence[float], margin: float = 0.1) -> float:
    """The mask's highest foreground probability inside :func:`object_crop`'s square for ``box`` (``mask`` is a
    grid over the whole photo of ``size``); 0 where the square covers no cell."""
    r0, r1, c0, c1 = _window_cells(mask, size, box, margin)
    return float(mask[r0:r1, c0:c1].max()) if r1 > r0 and c1 > c0 else 0.0


def box_from_mask(mask: np.ndarray, size: tuple[int, int], box: Sequence[float], margin: float = 0.1,
                  threshold: float = 0.5) -> tuple[float, float, float, float]:
    """The box around the mask's foreground (>= ``threshold``) inside :func:`object_crop`'s square for ``box``, in
    the photo's pixels (``mask`` is a grid over the whole photo of ``size``); ``box`` itself where none is."""
    W, H = size
    rows, cols = mask.shape
    r0, r1, c0, c1 = _window_cells(mask, size, box, margin)
    found = mask_box(mask[r0:r1, c0:c1], threshold) if r1 > r0 and c1 > c0 else None
    if found is None:
        return tuple(float(v) for v in box)  # type: ignore[return-value]
    x, y, w, h = found
    return (c0 + x) * W / cols, (r0 + y) * H / rows, w * W / cols, h * H / rows
