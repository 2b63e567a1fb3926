"""The safe image decoder: every refusal carries the status the HTTP API answers with."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from mindtrace.images import ImageLimits, ImageRejected, decode_image


def _b64(img: Image.Image, fmt: str, **save: object) -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF"])
def test_accepted_formats_decode(fmt):
    img = decode_image(_b64(Image.new("L", (28, 28), 200), fmt))
    assert img.size == (28, 28) and img.format == fmt


@pytest.mark.parametrize("fmt", ["TIFF", "WEBP", "ICO"])
def test_other_image_formats_are_415_and_named(fmt):
    with pytest.raises(ImageRejected, match=f"{fmt} images are not accepted") as err:
        decode_image(_b64(Image.new("L", (28, 28)), fmt))
    assert err.value.status == 415


def test_decompression_bomb_is_refused_from_its_header():
    # A 3000x3000 blank PNG is a few kB on the wire and 9 M pixels once decoded.
    text = _b64(Image.new("1", (3000, 3000)), "PNG")
    assert len(text) < 20_000
    with pytest.raises(ImageRejected, match="9,000,000 pixels") as err:
        decode_image(text)
    assert err.value.status == 413
    assert decode_image(text, ImageLimits(max_pixels=10_000_000)).size == (3000, 3000)


def test_a_bomb_beyond_pillows_own_hard_limit_is_413_too():
    # 30,000 x 30,000 one-bit pixels: 146 kB of base64, and more than twice Pillow's warning limit, so
    # Pillow itself refuses it in Image.open, before our check of the header could run.
    text = _b64(Image.new("1", (30_000, 30_000)), "PNG")
    with pytest.raises(ImageRejected, match="too many pixels to open; the limit is 4,194,304") as err:
        decode_image(text)
    assert err.value.status == 413


@pytest.mark.parametrize("fmt", ["GIF", "PNG"])
def test_animations_are_refused(fmt):
    frames = [Image.new("L", (28, 28), v) for v in (0, 128, 255)]
    text = _b64(frames[0], fmt, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageRejected, match="3 frames") as err:
        decode_image(text)
    assert err.value.status == 400


def test_not_an_image_is_400():
    with pytest.raises(ImageRejected, match="not an image") as err:
        decode_image(base64.b64encode(b"%PDF-1.4 not a picture").decode())
    assert err.value.status == 400
