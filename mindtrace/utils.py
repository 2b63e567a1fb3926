"""Small helpers shared by the library, the service and the tests. No torchvision."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import io
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from mindtrace.images import decode_image

if TYPE_CHECKING:  # torch is imported where it is used: the CLI and the fetch code start faster without it
    import torch

T = TypeVar("T")
log = logging.getLogger(__name__)


def ifnone(val: T | None, default: T) -> T:
    """``val`` unless it is None, else ``default``.

    >>> ifnone(None, 3), ifnone(0, 3)
    (3, 0)
    """
    return default if val is None else val


def flatten_dict(d: Mapping[str, Any], parent_key: str = "", sep: str = ".") -> dict[str, Any]:
    """Flatten nested mappings into one level, joining keys with ``sep``.

    >>> flatten_dict({"a": 1, "b": {"c": 2, "d": {"e": 3}}})
    {'a': 1, 'b.c': 2, 'b.d.e': 3}
    """
    items: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{parent_key}{sep}{key}" if parent_key else str(key)
        if isinstance(value, Mapping) and value:
            items.update(flatten_dict(value, name, sep))
        else:
            items[name] = value
    return items


def epoch_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Lightning's ``callback_metrics`` as plain floats, per-step values dropped, ``_epoch`` suffixes removed.

    >>> epoch_metrics({"train_loss_step": 0.5, "train_loss_epoch": 0.25, "val_acc": 0.75})
    {'train_loss': 0.25, 'val_acc': 0.75}
    """
    return {k.removesuffix("_epoch"): float(v) for k, v in metrics.items() if not k.endswith("_step")}


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota.

    >>> available_cores() >= 1
    True
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return max(1, cores)


def pil_to_ascii(img: Image.Image) -> str:
    """Encode an image as base64 PNG text, the form the HTTP API takes.

    >>> s = pil_to_ascii(Image.new("L", (28, 28)))
    >>> s[:8]
    'iVBORw0K'
    """
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def ascii_to_pil(s: str) -> Image.Image:
    """Decode base64 image text (an optional ``data:image/...;base64,`` prefix is allowed).

    Raises ValueError (``mindtrace.images.ImageRejected``) with a readable message for text that is not
    base64, bytes that are not a PNG, JPEG, BMP or GIF image, animated images and decompression bombs.

    >>> ascii_to_pil(pil_to_ascii(Image.new("L", (28, 28)))).size
    (28, 28)
    """
    return decode_image(s)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """An image as a float tensor ``[C, H, W]`` in ``[0, 1]`` (``C`` = its bands).

    >>> pil_to_tensor(Image.new("L", (3, 2), 255)).shape
    torch.Size([1, 2, 3])
    """
    import torch

    arr = np.array(img)  # a writable copy: torch refuses to share read-only buffers
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    arr = arr.reshape(arr.shape[0], arr.shape[1], -1)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255)


def tensor_to_pil(t: torch.Tensor) -> Image.Image:
    """A ``[H, W]``, ``[1, H, W]`` or ``[3, H, W]`` tensor (floats in ``[0, 1]`` or uint8) as an image.

    >>> import torch
    >>> tensor_to_pil(torch.ones(1, 2, 3)).getpixel((0, 0))
    255
    """
    import torch

    t = t.detach().cpu()
    if t.dim() == 3:
        t = t[0] if t.shape[0] == 1 else t.permute(1, 2, 0)
    if t.dtype != torch.uint8:
        t = (t.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(t.numpy())


def file_digest(path: str | os.PathLike, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in chunks.

    >>> import tempfile; f = tempfile.NamedTemporaryFile(delete=False); _ = f.write(b"abc"); f.close()
    >>> file_digest(f.name)
    '900150983cd24fb0d6963f7d28e17f72'
    """
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    Readers never see a half-written file: an error (a failed check, an interrupt) removes the temporary.

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> with atomic_write(d / "x.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (d / "x.txt").read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, waiting_for: str = "another process") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block.

    The lock belongs to the open file, so a process that dies releases it: no stale lock files to clean.

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> with exclusive_lock(d / ".lock"):
    ...     pass
    """
    with _flock(path, fcntl.LOCK_EX, waiting_for):
        yield


@contextlib.contextmanager
def shared_lock(path: str | os.PathLike, waiting_for: str = "another process") -> Iterator[None]:
    """Hold a shared ``flock`` on ``path`` for the block: readers together, never beside an exclusive holder.

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> with shared_lock(d / ".lock"), shared_lock(d / ".lock"):
    ...     pass
    """
    with _flock(path, fcntl.LOCK_SH, waiting_for):
        yield


@contextlib.contextmanager
def _flock(path: str | os.PathLike, kind: int, waiting_for: str) -> Iterator[None]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for a lock on %s: %s", path, waiting_for)
            fcntl.flock(f, kind)
        yield
