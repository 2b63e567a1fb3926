"""Real MNIST test digits as the HTTP API takes them: base64 PNG text with their labels.

The load tests, the serving benchmark and the service tests all send these, so a server is judged on the
digits the model was tested on, not on one image repeated.

>>> digits = mnist_test_digits(100)                      # doctest: +SKIP
>>> digits.texts[0][:8], int(digits.labels[0])     # doctest: +SKIP
('iVBORw0K', 7)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mindtrace.config import Config
from mindtrace.data.fetch import MnistSpec, ensure_mnist, load_mnist_arrays
from mindtrace.utils import pil_to_ascii


@dataclass(frozen=True)
class Digits:
    """``texts[i]`` is digit ``i`` as base64 PNG, ``labels[i]`` its label, ``pixels[i]`` its uint8 28x28."""

    texts: list[str]
    labels: np.ndarray
    pixels: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


def mnist_test_pixels(
    n: int = 1000, data_dir: str | Path | None = None, config: Config | None = None, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` MNIST test digits (at most 10,000) as uint8 pixels ``[n, 28, 28]`` and int64 labels,
    fetching the MNIST cache first if it is empty."""
    if not 1 <= n <= 10_000:
        raise ValueError(f"n must be between 1 and 10,000 test digits; got {n}")
    config = config or Config()
    spec = MnistSpec.from_config(config)
    data_dir = Path(data_dir) if data_dir else config["DIR_PATHS"].getpath("DATA") / "mnist"
    ensure_mnist(data_dir, spec, progress)
    _, _, test_x, test_y = load_mnist_arrays(data_dir, spec)
    return test_x[:n], test_y[:n].astype(np.int64)


def mnist_test_digits(
    n: int = 1000, data_dir: str | Path | None = None, config: Config | None = None, progress: bool = False
) -> Digits:
    """The first ``n`` MNIST test digits (at most 10,000) as base64 PNG, with their labels and pixels."""
    pixels, labels = mnist_test_pixels(n, data_dir, config, progress)
    return Digits([pil_to_ascii(Image.fromarray(p)) for p in pixels], labels, pixels)
