import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from mindtrace.preprocess import FIT, SIZE, normalize, preprocess, to_mnist_pixels


def _digit() -> np.ndarray:
    """A white-on-black '7'-like stroke in a 28x28 frame, MNIST style."""
    img = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(img)
    draw.line([(8, 7), (20, 7), (12, 22)], fill=255, width=3)
    return np.array(img)


def test_mnist_formatted_image_gives_exactly_the_training_tensor():
    pixels = _digit()
    expected = normalize(torch.from_numpy(pixels)).unsqueeze(0)
    assert torch.equal(preprocess(Image.fromarray(pixels)), expected)


def test_dark_ink_on_light_background_is_inverted():
    pixels = _digit()
    assert np.array_equal(to_mnist_pixels(ImageOps.invert(Image.fromarray(pixels))), pixels)


@pytest.mark.parametrize("mode", ["RGB", "P", "I;16", "1"])
def test_any_mode_becomes_grey(mode):
    pixels = _digit()
    img = Image.fromarray(pixels).convert(mode)
    out = to_mnist_pixels(img)
    assert out.shape == (SIZE, SIZE) and out.dtype == np.uint8
    # the ink stays where it was, whatever the mode
    assert np.array_equal(out > 127, pixels > 127)


def test_transparent_background_takes_the_opaque_background_colour():
    pixels = _digit()
    rgba = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    rgba[..., 3] = pixels  # black ink drawn on a fully transparent sheet
    out = to_mnist_pixels(Image.fromarray(rgba))
    assert np.array_equal(out > 127, pixels > 127)


def test_large_photo_like_image_is_fitted_and_centred():
    big = Image.new("RGB", (300, 200), "white")
    ImageDraw.Draw(big).rectangle([200, 20, 240, 180], fill="black")  # a thick bar, off-centre
    out = to_mnist_pixels(big)
    ys, xs = np.nonzero(out)
    assert ys.max() - ys.min() + 1 <= FIT and xs.max() - xs.min() + 1 <= FIT
    cy = (out.sum(axis=1) * np.arange(SIZE)).sum() / out.sum()
    cx = (out.sum(axis=0) * np.arange(SIZE)).sum() / out.sum()
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1


def test_blank_image_is_all_background():
    assert not to_mnist_pixels(Image.new("L", (50, 50), 255)).any()
    assert preprocess(Image.new("L", (50, 50))).shape == (1, SIZE, SIZE)
