"""The IDX reader and writer, on generated arrays and on Debian's Fashion-MNIST files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from mindtrace.data.idx import IdxError, idx_bytes, read_idx, write_idx

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", "<i4", "f4", "f8"])
@pytest.mark.parametrize("name", ["x-idx", "x-idx.gz"])
def test_roundtrip(tmp_path: Path, dtype: str, name: str) -> None:
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    np.testing.assert_array_equal(back, array)
    assert back.dtype == array.dtype.newbyteorder("=") and back.flags.writeable


def test_header_is_big_endian() -> None:
    data = idx_bytes(np.array([[1, 2, 3]], dtype=np.int16))
    assert data == bytes.fromhex("0000 0b02 00000001 00000003 0001 0002 0003")


def test_gzip_is_recognised_by_content_not_name(tmp_path: Path) -> None:
    array = np.arange(10, dtype=np.uint8)
    (tmp_path / "plain-name").write_bytes(gzip.compress(idx_bytes(array)))
    (tmp_path / "raw.gz").write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_idx(tmp_path / "plain-name"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "raw.gz"), array)


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda b: b[:-1], "truncated: 9 of the 10 bytes"),
        (lambda b: b[:6], "header truncated"),
        (lambda b: b + b"\0", "1 bytes after the 10 bytes"),
        (lambda b: b"\x01" + b[1:], "not an IDX file"),
        (lambda b: b"", "not an IDX file"),
        (lambda b: b[:2] + b"\x0a" + b[3:], "unknown IDX type code 0x0a"),
        (lambda b: gzip.compress(b)[:-6], "damaged gzip data"),
    ],
    ids=["truncated", "short-header", "trailing", "magic", "empty", "type", "gzip"],
)
def test_invalid_files_are_refused(tmp_path: Path, mangle, message: str) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(mangle(idx_bytes(np.arange(10, dtype=np.uint8))))
    with pytest.raises(IdxError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)


def test_unsupported_arrays_are_refused() -> None:
    with pytest.raises(IdxError, match="cannot store dtype int64"):
        idx_bytes(np.zeros(3, dtype=np.int64))
    with pytest.raises(IdxError, match="1 to 255 dimensions"):
        idx_bytes(np.uint8(3))


@pytest.mark.skipif(
    not FASHION_MNIST.is_dir(), reason=f"{FASHION_MNIST} absent: apt-get install dataset-fashion-mnist"
)
@pytest.mark.parametrize("prefix, count", [("train", 60000), ("t10k", 10000)])
def test_reads_fashion_mnist(prefix: str, count: int) -> None:
    images = read_idx(FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz")
    assert images.shape == (count, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (count,) and labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [count // 10] * 10
