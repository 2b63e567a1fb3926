"""What the tests that start a real service share: its environment, a model trained by the real CLI, the
server itself, and waiting for something to happen."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from benchmarks.process import free_port, running
from mindtrace.data.digits import mnist_test_pixels
from mindtrace.utils import pil_to_ascii

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
T = TypeVar("T")


def service_env(home: Path, data_dir: Path, bentoml_home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any MINDTRACE/BENTOML setting, then an isolated home, the MNIST
    cache at ``data_dir``, a BentoML store of its own, a one-second swap poll, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINDTRACE", "BENTOML"))}
    env.update(
        MINDTRACE_HOME=str(home),
        MINDTRACE__DIR_PATHS__DATA=str(data_dir),
        MINDTRACE__MNIST__SOURCES="local",
        MINDTRACE__SERVICE__SWAP_POLL_SECONDS="1",
        BENTOML_HOME=str(bentoml_home),
        BENTOML_DO_NOT_TRACK="true",
        **extra,
    )
    return env


def train(env: dict[str, str], cwd: Path, *options: str) -> dict[str, Any]:
    """``mindtrace train --json`` with a small model unless ``options`` say otherwise; its summary."""
    small = ["--epochs", "1", "--num-train", "3000", "--hidden-dims", "32"]
    command = [str(BIN / "mindtrace"), "train", *small, *options, "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@contextlib.contextmanager
def served(env: dict[str, str], log: Path, ready: str = "/readyz") -> Iterator[tuple[str, int]]:
    """``bentoml serve service:svc`` on a free 127.0.0.1 port until the block ends: its URL and pid."""
    url = f"http://127.0.0.1:{free_port()}"
    port = url.rsplit(":", 1)[1]
    command = [str(BIN / "bentoml"), "serve", "service:svc", "--host", "127.0.0.1", "--port", port]
    with running(command, url + ready, log, cwd=ROOT, env=env, timeout=180) as proc:
        yield url, proc.pid


def warnings_in(log: Path) -> str:
    """The warnings and errors of a server's log (tracebacks included), for an assertion's message."""
    lines = log.read_text(errors="replace").splitlines()
    kept = [line for line in lines if not line[:4].isdigit() or " [WARNING] " in line or " [ERROR] " in line]
    return "\n".join(kept)[-5000:]


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.3) -> T:
    """The first true value of ``predicate()``, polled every ``interval`` s; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def random_test_digits(data_dir: Path, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` MNIST test digits drawn at random, as base64 PNG, and their labels.

    At random: the test set's first half comes from cleaner writers than its second (NIST's SD-3 and SD-1),
    and the detector tells the first 1,000 digits from the whole set (p = 2e-6).
    """
    pixels, labels = mnist_test_pixels(10_000, data_dir)
    chosen = np.random.default_rng(seed).choice(len(labels), n, replace=False)
    return [pil_to_ascii(Image.fromarray(pixels[i])) for i in chosen], labels[chosen]
