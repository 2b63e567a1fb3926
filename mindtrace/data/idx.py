"""The IDX format of the MNIST files: a 4-byte magic, one big-endian uint32 per dimension, then the data.

The magic is ``0x00 0x00 <type code> <number of dimensions>``; the data is C-ordered and big-endian.
Files may be gzipped: the reader recognises gzip by its magic bytes, not by the file name.

>>> import tempfile; path = Path(tempfile.mkdtemp()) / "x-idx2-ubyte.gz"
>>> write_idx(path, np.arange(6, dtype=np.uint8).reshape(2, 3))
>>> read_idx(path)
array([[0, 1, 2],
       [3, 4, 5]], dtype=uint8)
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"

# Type codes of the IDX specification; multi-byte values are big-endian.
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in _DTYPES.items()}


class IdxError(ValueError):
    """A file that is not valid IDX: bad magic, unknown type, or a payload of the wrong length."""


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array`` (uint8, int8, int16, int32, float32 or float64; 1 to 255 dimensions).

    >>> idx_bytes(np.array([7, 9], dtype=np.uint8)).hex()
    '00000801000000020709'
    """
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise IdxError(f"IDX cannot store dtype {array.dtype}; use one of {sorted(map(str, _CODES))}")
    if not 1 <= array.ndim <= 255:
        raise IdxError(f"IDX stores 1 to 255 dimensions, not {array.ndim}")
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    return header + np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends with ``.gz``.

    The gzip header carries no timestamp, so the same array always gives the same bytes.

    >>> import tempfile; path = Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
    >>> write_idx(path, np.array([1, 2], dtype=np.uint8)); path.stat().st_size
    10
    """
    data = idx_bytes(array)
    path = Path(path)
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzipped or not, as a writable array in native byte order.

    Raises :class:`IdxError`, naming the file, when the header is invalid or when the payload is not exactly
    as long as the dimensions say (a truncated download, or trailing bytes).

    >>> import tempfile; path = Path(tempfile.mkdtemp()) / "x-idx1-ubyte"
    >>> _ = path.write_bytes(idx_bytes(np.array([1, 2], dtype=np.uint8)) + b"junk")
    >>> try:
    ...     read_idx(path)
    ... except IdxError as exc:
    ...     print(exc.args[0].split(": ", 1)[1])
    4 bytes after the 2 bytes of a (2,) uint8 array
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise IdxError(f"{path}: damaged gzip data ({exc})") from None
    if len(data) < 4 or data[:2] != b"\0\0":
        raise IdxError(f"{path}: not an IDX file (magic {data[:4].hex() or 'missing'}, expected 0000ttnn)")
    code, ndim = data[2], data[3]
    if code not in _DTYPES:
        raise IdxError(f"{path}: unknown IDX type code 0x{code:02x}")
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise IdxError(f"{path}: header truncated or with no dimensions ({ndim} declared)")
    shape = struct.unpack_from(f">{ndim}I", data, 4)
    dtype = _DTYPES[code]
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(data) - offset
    what = f"{shape} {dtype.newbyteorder('=')} array"
    if got < expected:
        raise IdxError(f"{path}: truncated: {got} of the {expected} bytes of a {what}")
    if got > expected:
        raise IdxError(f"{path}: {got - expected} bytes after the {expected} bytes of a {what}")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))
