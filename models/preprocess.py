"""The one image preprocessing path, shared by training, indexing and serving.

Query and catalog images go through the same steps (bounded decode, EXIF orientation, alpha on white,
RGB, resize, centre crop, normalise) so that their embeddings are comparable.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2 as T

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_ASPECT_RATIO = 10.0  # panoramas and banners pass; a 1x4000 strip does not
# Modes Pillow resizes with antialiasing as they are (RGBA and LA premultiplied by alpha), so a large image is
# shrunk before the alpha composite and RGB conversion, which then cost memory for the small image only.
RESIZABLE_MODES = ("L", "LA", "RGB", "RGBA", "I", "F")


class ImageRejected(ValueError):
    """An input that is not a usable image; ``code`` is machine-readable (e.g. for HTTP errors)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def load_image(source: bytes | str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None,
               short_side: int | None = None, max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO) -> Image.Image:
    """Decode an image to RGB at bounded cost, refusing non-images, truncated files, bombs and odd shapes.

    The header is checked before any pixel is decoded: at most ``max_pixels`` pixels and a long side at most
    ``max_aspect_ratio`` times the short one. ``draft_size`` lets JPEG decode at a reduced scale (never below
    that size). ``short_side`` (the network's input size) makes Pillow resize the decoded image so its short
    side is at most that: the size the tensor transform resizes to anyway, so embeddings are unchanged, and
    with the aspect limit the long side is at most ``max_aspect_ratio * short_side``, so no tensor made from
    the image can be large, whatever shape was sent. Every decode, conversion or
    resize failure is an :class:`ImageRejected`, never another exception.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(source, "rb")  # noqa: SIM115
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                image = Image.open(stream)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageRejected("image_too_large", f"image refused as a decompression bomb: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - any failure to read the header means "not an image"
                raise ImageRejected("not_an_image", f"not a decodable image: {exc}") from None
            width, height = image.size
            if width < 1 or height < 1:
                raise ImageRejected("bad_image_shape", f"image is {width}x{height}")
            if width * height > max_pixels:
                raise ImageRejected("image_too_large", f"image is {width}x{height}, over the {max_pixels} pixel limit")
            if max(width, height) > max_aspect_ratio * min(width, height):
                raise ImageRejected("bad_image_shape", f"image is {width}x{height}; the long side may be at most "
                                    f"{max_aspect_ratio:g} times the short one")
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            try:
                image.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageRejected("image_too_large", f"image refused as a decompression bomb: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - OSError, SyntaxError, ValueError, struct.error, ... from codecs
                raise ImageRejected("truncated_image", f"image data is truncated or corrupt: {exc}") from None
            try:
                image = ImageOps.exif_transpose(image)
                if short_side is not None and image.mode in RESIZABLE_MODES:  # shrink first: convert a small image
                    image = shrink_to_short_side(image, short_side)
                image = _to_rgb_on_white(image)
                return shrink_to_short_side(image, short_side) if short_side is not None else image
            except Exception as exc:  # noqa: BLE001 - odd modes or metadata that Pillow cannot convert
                raise ImageRejected("unsupported_image", f"image cannot be converted to RGB: {exc}") from None
    finally:
        stream.close()


def shrink_to_short_side(image: Image.Image, size: int) -> Image.Image:
    """Resize (antialiased, in Pillow) so the short side is ``size``, as ``torchvision`` Resize(size) would.

    Images whose short side is already at most ``size`` are returned as they are.
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if short <= size:
        return image
    new_long = int(size * long / short)  # torchvision's rounding, so its Resize is then a no-op
    new_size = (size, new_long) if width <= height else (new_long, size)
    return image.resize(new_size, Image.Resampling.BILINEAR)


def _to_rgb_on_white(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return image.convert("RGB")


def build_pixel_transform(image_size: int) -> T.Compose:
    """PIL RGB image -> uint8 pixels (3, image_size, image_size): resize and centre crop, not normalised.

    What DataLoader workers and request threads produce: a quarter of the bytes of the float tensor, and no
    per-image float arithmetic; the runtime normalises (inside the exported graph, or in torch on the batch).
    """
    return T.Compose([
        T.PILToTensor(),
        T.Resize(image_size, antialias=True),
        T.CenterCrop(image_size),
    ])


def build_normalise(mean: tuple[float, ...], std: tuple[float, ...]) -> T.Compose:
    """uint8 pixels (..., 3, S, S) -> the network's normalised float input (scale to [0, 1], then mean/std)."""
    return T.Compose([
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean, std),
    ])


def build_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> T.Compose:
    """PIL RGB image -> normalised float tensor (3, image_size, image_size): pixels, then normalise."""
    return T.Compose([*build_pixel_transform(image_size).transforms, *build_normalise(mean, std).transforms])
