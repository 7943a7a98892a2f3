"""The one image preprocessing path, shared by training, indexing and serving.

Query and catalog images go through the same steps (bounded decode, EXIF orientation, alpha on white,
RGB, resize, centre crop, normalise) so that their embeddings are comparable.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import v2 as T

DEFAULT_MAX_PIXELS = 40_000_000


class ImageRejected(ValueError):
    """An input that is not a usable image; ``code`` is machine-readable (e.g. for HTTP errors)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def load_image(source: bytes | str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decode an image to RGB, refusing non-images, truncated files and decompression bombs.

    ``draft_size`` lets JPEG decode at a reduced scale (never below that size), which is much faster for
    large photos and loses nothing once the image is resized to the network's input.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(source, "rb")  # noqa: SIM115
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                image = Image.open(stream)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageRejected("image_too_large", f"image refused as a decompression bomb: {exc}") from None
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise ImageRejected("not_an_image", f"not a decodable image: {exc}") from None
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected("image_too_large", f"image is {width}x{height}, over the {max_pixels} pixel limit")
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            try:
                image.load()
            except (OSError, ValueError, SyntaxError) as exc:
                raise ImageRejected("truncated_image", f"image data is truncated or corrupt: {exc}") from None
            image = ImageOps.exif_transpose(image)
            return _to_rgb_on_white(image)
    finally:
        stream.close()


def _to_rgb_on_white(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return image.convert("RGB")


def build_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> T.Compose:
    """PIL RGB image -> normalised float tensor (3, image_size, image_size)."""
    return T.Compose([
        T.PILToTensor(),
        T.Resize(image_size, antialias=True),
        T.CenterCrop(image_size),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean, std),
    ])
