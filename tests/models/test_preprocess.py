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


def test_strips_are_refused_from_the_header():
    """A 1x4000 strip passes any pixel limit, but resizing its short side to the input size made a huge tensor."""
    for size in ((1, 4000), (4000, 1), (1, 40_000_000)):
        with pytest.raises(ImageRejected) as err:
            load_image(_bytes(Image.new("L", size), "PNG"))
        assert err.value.code == "bad_image_shape"


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK", "I;16"])
def test_images_are_shrunk_to_the_input_scale_before_any_tensor(mode):
    image = Image.new(mode, (3000, 400))
    data = _bytes(image, "TIFF" if mode in ("CMYK", "I;16") else "PNG")
    loaded = load_image(data, short_side=128)
    assert loaded.mode == "RGB" and loaded.size == (960, 128)  # long side <= 10 x 128, whatever was sent
