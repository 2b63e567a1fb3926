"""The first half of a prediction: base64 image text to the uint8 pixels every model runtime takes.

The service, and the rival servers it is benchmarked against, all call these functions, so every server
does the same work per image. No torch here: serving runs the model with ONNX Runtime (``mindtrace.runtime``).

>>> from mindtrace.images import EXAMPLE_IMAGE
>>> digit_pixels(EXAMPLE_IMAGE).shape
(28, 28)
"""

from __future__ import annotations

import numpy as np

from mindtrace.images import ImageLimits, ImageRejected, decode_image
from mindtrace.preprocess import to_mnist_pixels

DEFAULT_LIMITS = ImageLimits()


def digit_pixels(text: str, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Base64 image text to the 28x28 uint8 MNIST-style pixels the model takes.

    Any failure is the image's: ``ImageRejected`` with the HTTP status that fits (see ``decode_image``).
    """
    img = decode_image(text, limits)
    try:
        return to_mnist_pixels(img)
    except (ValueError, OSError, TypeError) as exc:  # an odd mode or a lazily-failing decoder
        raise ImageRejected(f"cannot read the pixels of this {img.format} image: {exc}") from None


def batch_pixels(texts: list[str], limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Many base64 images to pixels ``[n, 28, 28]``; a bad one raises ``ImageRejected`` naming its index.

    >>> from mindtrace.images import EXAMPLE_IMAGE
    >>> batch_pixels([EXAMPLE_IMAGE, "@@"])
    Traceback (most recent call last):
    ...
    mindtrace.images.ImageRejected: images[1]: invalid base64: ...
    """
    pixels = np.empty((len(texts), 28, 28), dtype=np.uint8)
    for i, text in enumerate(texts):
        try:
            pixels[i] = digit_pixels(text, limits)
        except ImageRejected as exc:
            raise ImageRejected(f"images[{i}]: {exc}", exc.status) from None
    return pixels
