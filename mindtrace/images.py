"""Base64 image text to a PIL image, safely: the one decoder behind ``ascii_to_pil`` and the HTTP API.

Everything a client can send is checked before any pixel is decoded: the base64 itself, the format (PNG,
JPEG, BMP and GIF), the pixel count read from the header (a small file can declare a huge image: a
decompression bomb), and the frame count (animated or multi-frame images are refused rather than silently
cut to their first frame, because which frame holds the digit is the sender's business).
A refusal is an ``ImageRejected`` carrying the HTTP status that fits it.

>>> import base64, io
>>> from PIL import Image
>>> buf = io.BytesIO(); Image.new("L", (28, 28)).save(buf, "PNG")
>>> decode_image(base64.b64encode(buf.getvalue()).decode()).size
(28, 28)
>>> decode_image("not base64!")
Traceback (most recent call last):
...
mindtrace.images.ImageRejected: invalid base64: ...
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "BMP", "GIF")
# The first MNIST test digit (a 7) as base64 PNG: the example in /docs, the README and scripts/run.sh.
EXAMPLE_IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAAxUlEQVR4nGNgGDaAEUKFpD77sfTFHeyS9xQYGBg+X4UKPuk6"
    "w8DAwMDAAuGm6l/TMnSweCzLwPDntSTDozPIOhkYGBgYBA3PmDIw/Lh1XShnGi5nBP+9KIRLTuzl/2AokwlDMlv0/U1cGq1/"
    "/rPDJcfQ+m83Ky45zrM/rHBqrPu3Daec9+8PlrjkhO/+W4ZLjvn0v9vKuCTV/v3zxSUn/+BfMSMuydZ//0xwydl+QpdEClsb"
    "Hoa7X1AkWZA5F53f4TIWEwAAaRE8kJuHrgAAAAAASUVORK5CYII="
)
# 2048x2048: far beyond any digit photo worth classifying, far below what would exhaust a worker.
MAX_PIXELS = 2048 * 2048


class ImageRejected(ValueError):
    """Input that is not an acceptable image; ``status`` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImageLimits:
    """What a decoded image may be: its formats, its pixel count, whether it may have several frames."""

    formats: tuple[str, ...] = FORMATS
    max_pixels: int = MAX_PIXELS


def decode_image(text: str, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Decode base64 image text (a ``data:image/...;base64,`` prefix is allowed) into a loaded image.

    Raises ``ImageRejected`` with status 400 (not base64, not an image, animated), 413 (too many pixels) or
    415 (an image format outside ``limits.formats``).
    """
    raw = _b64decode(text)
    try:
        img = Image.open(io.BytesIO(raw), formats=limits.formats)
    except UnidentifiedImageError:
        raise _unreadable(raw, limits) from None
    except Image.DecompressionBombError:  # beyond Pillow's own hard limit, which it checks in open
        limit = f"{limits.max_pixels:,}"
        raise ImageRejected(f"image declares too many pixels to open; the limit is {limit}", 413) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"not a readable image: {exc}") from None
    pixels = img.width * img.height
    if pixels > limits.max_pixels:
        raise ImageRejected(
            f"image is {img.width}x{img.height} = {pixels:,} pixels; the limit is {limits.max_pixels:,}", 413
        )
    if getattr(img, "n_frames", 1) > 1:
        raise ImageRejected(f"animated or multi-frame images are not accepted ({img.n_frames} frames)")
    try:
        if pixels > Image.MAX_IMAGE_PIXELS:  # only with a limit above Pillow's: its warning would repeat ours
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img.load()
        else:
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageRejected(f"not a readable {img.format} image: {exc}") from None
    return img


def _b64decode(text: str) -> bytes:
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise ImageRejected("a data: URL must be base64-encoded (data:image/png;base64,...)")
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageRejected(f"invalid base64: {exc}") from None
    if not raw:
        raise ImageRejected("empty image")
    return raw


def _unreadable(raw: bytes, limits: ImageLimits) -> ImageRejected:
    """Tell an image in a format we refuse (415) from bytes that are no image at all (400)."""
    try:
        fmt = Image.open(io.BytesIO(raw)).format
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return ImageRejected("not an image: the bytes are not PNG, JPEG, BMP or GIF")
    return ImageRejected(f"{fmt} images are not accepted; send one of {', '.join(limits.formats)}", 415)
