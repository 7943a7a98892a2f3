import io

import pytest
from PIL import Image

from models import ImageRejected, load_image


def _bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_non_image_is_rejected():
    with pytest.raises(ImageRejected) as err:
        load_image(b"%PDF-1.4 definitely not an image")
    assert err.value.code == "not_an_image"


def test_truncated_jpeg_is_rejected():
    data = _bytes(Image.effect_noise((400, 300), 40).convert("RGB"), "JPEG")
    with pytest.raises(ImageRejected) as err:
        load_image(data[: len(data) // 2])
    assert err.value.code == "truncated_image"


def test_too_many_pixels_is_refused_before_decoding():
    data = _bytes(Image.new("L", (7000, 7000)), "PNG")  # 49 MP, a few KB compressed
    assert len(data) < 200_000
    with pytest.raises(ImageRejected) as err:
        load_image(data, max_pixels=40_000_000)
    assert err.value.code == "image_too_large"


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    image = load_image(_bytes(rgba, "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    loaded = load_image(_bytes(image, "JPEG", exif=exif))
    assert loaded.size == (20, 40)


def test_draft_decodes_large_jpeg_at_reduced_scale_but_not_below_target():
    data = _bytes(Image.new("RGB", (2000, 1600), (10, 200, 10)), "JPEG")
    loaded = load_image(data, draft_size=224)
    assert 224 <= min(loaded.size) < 1600
