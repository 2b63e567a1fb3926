"""The one preprocessing path from an image to the model's input, shared by training and serving.

MNIST digits are white strokes on a black background, centred by their centre of mass in a 28x28 frame,
the digit itself fitted in 20x20. ``preprocess`` brings any PIL image to that form:

1. any mode (1, L, P, RGB, RGBA, I;16, ...) becomes 8-bit grey; transparency is laid on the background;
2. polarity: when the border is brighter than the middle, the image is taken to be a dark digit on a light
   background (pen on paper) and inverted, so both polarities are supported;
3. an image that is already 28x28 keeps its geometry (that is how the training images arrive), any other size
   is cropped to the ink, scaled so that its longer side is 20 px, and centred by centre of mass as in MNIST;
4. ``normalize`` scales the pixels and standardizes them with the training set's mean and std.

Training applies ``normalize`` to the uint8 MNIST tensors directly, so an MNIST digit sent to the service
gives the very tensor the model was trained on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch only where a tensor is made: serving turns images into pixels without it
    import torch

SIZE = 28
FIT = 20
# Mean and std of the 60,000 MNIST training pixels scaled to [0, 1].
MEAN = 0.1307
STD = 0.3081
_INVERTED = bytes(range(255, -1, -1))  # a byte table: pixel p becomes 255 - p
SPEC = {"size": SIZE, "fit": FIT, "mean": MEAN, "std": STD, "polarity": "white-on-black, auto-inverted"}


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels ``[..., 28, 28]`` to the float tensor the model takes.

    >>> import torch
    >>> round(normalize(torch.zeros(1, 28, 28, dtype=torch.uint8))[0, 0, 0].item(), 4)
    -0.4242
    """
    return (pixels.float() / 255.0 - MEAN) / STD


def to_mnist_pixels(img: Image.Image) -> np.ndarray:
    """Any image as a 28x28 uint8 array of white ink on black, MNIST-style.

    >>> to_mnist_pixels(Image.new("RGB", (100, 60), "white")).shape
    (28, 28)
    """
    grey = _to_grey(img)
    # Bytes rather than numpy for the border and the inversion: on 784 pixels numpy's per-call overhead is
    # most of the time, and this runs for every served image.
    raw = grey.tobytes()
    if _is_light_background(raw, *grey.size):
        raw = raw.translate(_INVERTED)
    if grey.size == (SIZE, SIZE):
        return np.frombuffer(raw, dtype=np.uint8).reshape(SIZE, SIZE).copy()
    return _fit_and_centre(Image.frombytes("L", grey.size, raw))


def preprocess(img: Image.Image) -> torch.Tensor:
    """Any PIL image to the normalized ``[1, 28, 28]`` float tensor the model was trained on.

    >>> preprocess(Image.new("L", (28, 28))).shape
    torch.Size([1, 28, 28])
    """
    import torch

    return normalize(torch.from_numpy(to_mnist_pixels(img))).unsqueeze(0)


def _to_grey(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        grey, opaque = np.asarray(rgba.convert("L")), np.asarray(rgba)[..., 3] > 0
        # Transparent pixels become the background: the opaque border's colour if there is one,
        # else the colour that contrasts with the ink (a dark stroke on a transparent sheet is pen on paper).
        opaque_border = _border(grey.shape) & opaque
        if opaque_border.any():
            light = grey[opaque_border].mean() > 127.5
        else:
            light = opaque.any() and grey[opaque].mean() <= 127.5
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255) if light else (0, 0, 0, 255))
        img = Image.alpha_composite(canvas, rgba)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(scaled.round().astype(np.uint8))
    return img if img.mode == "L" else img.convert("L")


def _is_light_background(raw: bytes, width: int, height: int) -> bool:
    """True when the border of a grey image (``raw``, row by row) is brighter than mid-grey: dark ink on a
    light background.

    >>> _is_light_background(bytes([255] * 9), 3, 3), _is_light_background(bytes([0] * 9), 3, 3)
    (True, False)
    """
    if min(width, height) <= 2:
        return sum(raw) / len(raw) > 127.5  # every pixel is on the border
    last_row = width * (height - 1)  # where it starts in raw
    # The top and bottom rows, then the left and right columns without their corners.
    rows = sum(raw[:width]) + sum(raw[last_row:])
    columns = sum(raw[width:last_row:width]) + sum(raw[2 * width - 1 : last_row : width])
    edges = rows + columns
    return edges / (2 * width + 2 * (height - 2)) > 127.5


def _border(shape: tuple[int, ...]) -> np.ndarray:
    edge = np.ones(shape[:2], dtype=bool)
    if min(shape[:2]) > 2:
        edge[1:-1, 1:-1] = False
    return edge


def _fit_and_centre(grey: Image.Image) -> np.ndarray:
    arr = np.asarray(grey)
    ys, xs = np.nonzero(arr > 0)
    if len(ys) == 0:
        return np.zeros((SIZE, SIZE), dtype=np.uint8)
    digit = grey.crop((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    scale = FIT / max(digit.size)
    new_size = (max(1, round(digit.width * scale)), max(1, round(digit.height * scale)))
    digit = np.asarray(digit.resize(new_size, Image.Resampling.LANCZOS))
    # Place the centre of mass at the frame's centre, as MNIST did, clipped to stay inside the frame.
    total = digit.sum(dtype=np.float64)
    cy = (digit.sum(axis=1) * np.arange(digit.shape[0])).sum() / total
    cx = (digit.sum(axis=0) * np.arange(digit.shape[1])).sum() / total
    top = int(np.clip(round(SIZE / 2 - cy - 0.5), 0, SIZE - digit.shape[0]))
    left = int(np.clip(round(SIZE / 2 - cx - 0.5), 0, SIZE - digit.shape[1]))
    out = np.zeros((SIZE, SIZE), dtype=np.uint8)
    out[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return out
