"""Servers started for a measurement or a test: a free loopback port, a start that waits until the server is
ready, a stop that ends exactly what was started, a meter of the CPU and memory a process tree uses, and the
resident memory of each process in a tree.

>>> port = free_port()
>>> 1024 < port < 65536
True
>>> with running(["bentoml", "serve", "service:svc", "--port", str(port)],   # doctest: +SKIP
...              f"http://127.0.0.1:{port}/readyz", Path("serve.log"), cwd=Path(".")) as proc:
...     tree_memory(proc.pid)
[ProcessMemory(pid=..., role='supervisor', rss_mb=..., command='bentoml serve service:svc ...'), ...]
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
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched(
    command: list[str], log_path: Path, *, cwd: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """Start a server in its own session, its output in ``log_path``; stop the session on leaving.

    Its own session means that stopping it stops the server's worker processes too, and nothing else.

    >>> with launched(["sleep", "60"], Path("/tmp/sleep.log"), cwd=Path(".")) as proc:   # doctest: +SKIP
    ...     wait_ready(proc, "http://127.0.0.1:9/", Path("/tmp/sleep.log"), timeout=1)
    """
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
        )
        try:
            yield proc
        finally:
            stop(proc)


def wait_ready(proc: subprocess.Popen, health_url: str, log_path: Path, timeout: float = 120) -> None:
    """Return once ``health_url`` answers 200; raise RuntimeError if the server exits or takes too long.

    It asks every 50 ms: a refused connection costs microseconds, and cold starts are timed with this.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{Path(proc.args[0]).name} exited: {tail(log_path)}")
        try:
            with urllib.request.urlopen(health_url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{Path(proc.args[0]).name} not ready in {timeout:.0f} s: {tail(log_path)}")
        time.sleep(0.05)


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
    """Start a server in its own session, wait until ``health_url`` answers 200, stop the session after."""
    with launched(command, log_path, cwd=cwd, env=env) as proc:
        wait_ready(proc, health_url, log_path, timeout)
        yield proc


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
class ProcessMemory:
    """One process of a server: its role in the tree and its resident memory."""

    pid: int
    role: str  # supervisor (the process started), worker, manager (a parent below the root), helper, job
    rss_mb: float
    command: str


# Processes that Python's multiprocessing starts beside the workers; they serve no request.
HELPERS = ("resource_tracker", "semaphore_tracker", "forkserver")
JOB = "mindtrace.jobs"  # a retraining job the service runs as its own process


def tree_memory(pid: int) -> list[ProcessMemory]:
    """The resident memory of process ``pid`` and of each of its descendants, with the role each plays.

    A leaf process is a worker unless it is one of multiprocessing's helpers or a retraining job; a process
    between the root and the workers (``mlflow models serve`` runs uvicorn, which runs them) is a manager.
    """
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in processes:
        try:
            with proc.oneshot():
                command = " ".join(proc.cmdline())
                rss = proc.memory_info().rss / 2**20
                has_children = bool(proc.children())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if proc.pid == pid:
            role = "supervisor"
        elif any(name in command for name in HELPERS):
            role = "helper"
        elif JOB in command:
            role = "job"
        else:
            role = "manager" if has_children else "worker"
        found.append(ProcessMemory(proc.pid, role, round(rss, 1), _short(command)))
    return found


def _short(command: str, chars: int = 120) -> str:
    """A command line fit for a table: the virtualenv's long paths cut to the program's name."""
    parts = command.split()
    if parts:
        parts[0] = Path(parts[0]).name
    text = " ".join(parts)
    return text if len(text) <= chars else text[: chars - 1] + "…"


@dataclass
class Usage:
    """What a process tree used while metered: CPU in cores (1.0 = one core busy; user and system time of
    the processes, not the kernel's network work done for them), resident memory in MB. ``rss_mb_first`` and
    ``rss_mb_last`` add up the processes alive at both ends, so a helper process that came or went (a
    retraining job) does not count as growth. ``cpu_by_process`` is each process's share of ``cpu_cores``,
    busiest first: it shows whether the workers shared the load."""

    cpu_cores: float
    rss_mb_first: float
    rss_mb_last: float
    rss_mb_max: float
    cpu_by_process: list[float] = field(default_factory=list)


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
        used = sorted((self._cpu[pid] - self._cpu_first[pid] for pid in self._cpu), reverse=True)
        both = self._rss_first.keys() & self._rss_last.keys()
        first, last = (sum(sizes[pid] for pid in both) / 2**20 for sizes in (self._rss_first, self._rss_last))
        cores = [round(u / seconds, 2) for u in used]
        self.usage = Usage(sum(used) / seconds, first, last, max(self._rss or [0.0]), cores)

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
