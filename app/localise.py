"""Where in a query photo to search: the localiser's most salient object, a caller's box, or the whole photo.

A shopper's photo shows the product in part of the frame; embedding the whole frame mostly embeds the room.
The service finds the objects (``models.localiser``), crops the most salient one as catalog photos frame a
product, and embeds the crop. A caller may name its own box (pixels, or fractions when every value is <= 1).
With nothing found, the whole photo is searched and the answer says so (``localised: false``).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

from app.errors import ApiError
from app.schemas import QueryBox
from app.settings import Settings
from models.localiser import PACKAGED_WEIGHTS, Detection, Localiser, looks_like_catalog_photo, object_crop
from models.localiser_runtime import RuntimeLocaliser
from models.matting import mask_peak, matted_crop

log = logging.getLogger(__name__)

_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def load_query_localiser(settings: Settings) -> Localiser | None:
    """The localiser the service uses, or None (localisation off, or no weights: whole-photo search)."""
    if not settings.localise:
        return None
    path = settings.localiser_weights or PACKAGED_WEIGHTS
    if not path.exists():
        log.warning("no localiser weights at %s: searching whole photos (run `lookalike train-detector`)", path)
        return None
    # The network runs in the embedder's engine (OpenVINO here; fp32 whatever the embedding precision), its box
    # decoding and NMS in PyTorch (models.localiser_runtime); runtime torch keeps the eager localiser.
    localiser = RuntimeLocaliser.load_with(path, settings.runtime_options())
    localiser.warm_up(every_shape=settings.localiser_warm_shapes)
    return localiser


def oriented_size(data: bytes) -> tuple[int, int] | None:
    """The photo's size as decoded (EXIF orientation applied), read from its header alone."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - the real decode reports bad images
        return None
    return (h, w) if orientation in _ROTATED else (w, h)


def parse_box(text: str, width: int, height: int) -> tuple[float, float, float, float]:
    """``x,y,w,h`` in pixels, or in fractions of the photo when every value is <= 1; clipped to the photo."""
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise ApiError(422, "invalid_box", f"box={text!r}: give four numbers x,y,w,h") from None
    if max(x, y, w, h) <= 1.0:
        x, w, y, h = x * width, w * width, y * height, h * height
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    if min(x, y, w, h) < 0 or x1 - x0 < 1 or y1 - y0 < 1:
        raise ApiError(422, "invalid_box", f"box={text!r} does not cover any of the {width}x{height} photo")
    return x0, y0, x1 - x0, y1 - y0


def is_catalog_photo(image: Image.Image, settings: Settings) -> bool:
    """Whether to search this photo whole although objects were found: it looks like a catalog photo (a plain
    backdrop all round), where a crop loses more than it gains (``Settings.whole_catalog_photos``)."""
    return settings.whole_catalog_photos and looks_like_catalog_photo(image)


# A region is matted only where the mask is confident somewhere in its square (else: the plain crop).
MATTE_MIN_PEAK = 0.5


@dataclass(frozen=True)
class Region:
    """A region to search: its box in the original photo's pixels and its crop of the decoded photo."""

    box: QueryBox
    crop: Image.Image


def regions(image: Image.Image, original: tuple[int, int] | None, detections: list[Detection], box: str | None,
            margin: float, whole_first: bool = False, mask: np.ndarray | None = None) -> tuple[Region, list[Region]]:
    """The region to search first and the other detected objects. ``image`` may be decoded at a reduced scale
    (JPEG draft); boxes are reported in ``original`` pixels. ``whole_first``: search the whole photo (source
    ``catalog_photo``) and list every detection as another object, unless the caller gave a box. ``mask``: the
    localiser's foreground over the photo; a detected or caller's box is then searched with its object matted
    onto white (``models.matting.matted_crop``; a plain crop where the mask is empty in that box's square)."""
    width, height = image.size
    ow, oh = original or (width, height)
    sx, sy = ow / width, oh / height

    def region(det_box: tuple[float, float, float, float], source: str, score: float | None) -> Region:
        x, y, w, h = det_box
        whole = source in ("whole", "catalog_photo")
        matted = not whole and mask is not None and mask_peak(mask, image.size, det_box, margin) >= MATTE_MIN_PEAK
        reported = QueryBox(x=round(x * sx, 1), y=round(y * sy, 1), w=round(w * sx, 1), h=round(h * sy, 1),
                            localised=source == "detected", source=source,
                            score=None if score is None else round(score, 4), matted=matted)
        if whole:
            crop = image
        elif matted:
            crop = matted_crop(image, mask, det_box, margin, min_peak=MATTE_MIN_PEAK)
        else:
            crop = object_crop(image, det_box, margin)
        return Region(reported, crop)

    found = [region(d.box, "detected", d.score) for d in detections]
    if box is not None:
        x, y, w, h = parse_box(box, ow, oh)
        return region((x / sx, y / sy, w / sx, h / sy), "caller", None), found
    if whole_first:
        return region((0.0, 0.0, float(width), float(height)), "catalog_photo", None), found
    if found:
        return found[0], found[1:]
    return region((0.0, 0.0, float(width), float(height)), "whole", None), []
