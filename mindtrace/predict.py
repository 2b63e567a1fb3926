"""The prediction step: base64 image text to model input, and model input to probabilities.

The service, and the rival servers it is benchmarked against, all call these functions, so every server
does the same work per image and gives the same answers.

>>> from mindtrace.images import EXAMPLE_IMAGE
>>> from mindtrace.models import MLPNet
>>> pixels = digit_pixels(EXAMPLE_IMAGE)[None]
>>> probabilities(MLPNet([784, 16, 10]).eval(), pixels).shape
(1, 10)
"""

from __future__ import annotations

import numpy as np
import torch

from mindtrace.images import ImageLimits, ImageRejected, decode_image
from mindtrace.models import MLPNet
from mindtrace.preprocess import normalize, to_mnist_pixels

DEFAULT_LIMITS = ImageLimits()
# Images per forward pass: bounds the memory of one call however many images it is given.
CHUNK = 4096


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


def probabilities(net: MLPNet, pixels: np.ndarray) -> np.ndarray:
    """Class probabilities ``[n, 10]`` (float32) for uint8 pixels ``[n, 28, 28]``."""
    with torch.inference_mode():
        parts = [
            torch.softmax(net(normalize(torch.from_numpy(pixels[i : i + CHUNK]))), dim=1)
            for i in range(0, len(pixels), CHUNK)
        ]
    return torch.cat(parts).numpy()
