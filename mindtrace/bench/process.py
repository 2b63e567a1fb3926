"""Servers started for a measurement or a test: a free loopback port, a start that waits until the server is
ready, a stop that ends exactly what was started, and a meter of the CPU and memory the server uses.

>>> port = free_port()
>>> 1024 < port < 65536
True
>>> with running(["bentoml", "serve", "service:svc", "--port", str(port)],   # doctest: +SKIP
...              f"http://127.0.0.1:{port}/readyz", Path("serve.log"), cwd=Path(".")) as proc:
...     ...
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(
    command: list[str],
    health_url: str,
    log_path: Path,
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> Iterator[subprocess.Popen]:
    """Start a server in its own session, wait until ``health_url`` answers 200, stop the session after.

    Its own session means that stopping it stops the server's worker processes too, and nothing else.
    """
    log = open(log_path, "wb")  # noqa: SIM115 - closed when the server stops
    proc = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{command[0]} exited: {tail(log_path)}")
            try:
                with urllib.request.urlopen(health_url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not get ready in {timeout:.0f} s: {tail(log_path)}")
            time.sleep(0.3)
        yield proc
    finally:
        stop(proc)
        log.close()


def stop(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM the session that ``proc`` leads (started with ``start_new_session``); SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def tail(path: Path, chars: int = 3000) -> str:
    """The end of a log file, for error messages."""
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@dataclass
class Usage:
    """What a process tree used while metered: CPU in cores (1.0 = one core busy; user and system time of
    the processes, not the kernel's network work done for them), resident memory in MB. ``rss_mb_first`` and
    ``rss_mb_last`` add up the processes alive at both ends, so a helper process that came or went (a
    retraining job) does not count as growth."""

    cpu_cores: float
    rss_mb_first: float
    rss_mb_last: float
    rss_mb_max: float


class Meter:
    """Samples the CPU time and resident memory of a process and all its descendants, every ``interval`` s.

    >>> with Meter(os.getpid()) as meter:   # doctest: +SKIP
    ...     work()
    >>> meter.usage.cpu_cores               # doctest: +SKIP
    """

    def __init__(self, pid: int, interval: float = 0.5):
        self.root = psutil.Process(pid)
        self.interval = interval
        self._cpu: dict[int, float] = {}  # pid -> CPU seconds at its latest sample
        self._cpu_first: dict[int, float] = {}  # pid -> CPU seconds at its first sample
        self._rss: list[float] = []  # the whole tree, every sample
        self._rss_first: dict[int, int] = {}
        self._rss_last: dict[int, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.usage: Usage | None = None

    def __enter__(self) -> Meter:
        self._t0 = time.monotonic()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self._sample()
        seconds = max(time.monotonic() - self._t0, 1e-9)
        used = sum(self._cpu[pid] - self._cpu_first[pid] for pid in self._cpu)
        both = self._rss_first.keys() & self._rss_last.keys()
        first, last = (sum(sizes[pid] for pid in both) / 2**20 for sizes in (self._rss_first, self._rss_last))
        self.usage = Usage(used / seconds, first, last, max(self._rss or [0.0]))

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        rss: dict[int, int] = {}
        for proc in [self.root, *self._children()]:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss[proc.pid] = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            seconds = times.user + times.system
            self._cpu_first.setdefault(proc.pid, seconds)
            self._cpu[proc.pid] = seconds
        if not self._rss_first:
            self._rss_first = rss
        self._rss_last = rss
        self._rss.append(sum(rss.values()) / 2**20)

    def _children(self) -> list[psutil.Process]:
        try:
            return self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
