"""The servers of a benchmark run and how each is started: this service, its rivals, and their no-op twins.

- ``mindtrace``: ``bentoml serve service:svc``, adaptive batching on; its variants, the same with one
  setting changed (``VARIANTS``): ``mindtrace-nobatch``, batching off; ``mindtrace-nolog``, the prediction
  log off (not in the default lineup: ``--servers mindtrace mindtrace-nolog`` measures what logging costs);
- ``fastapi``: ``uvicorn benchmarks.rivals:fastapi_app --workers <n>``;
- ``mlflow``: ``mlflow models serve`` of the pyfunc in ``benchmarks.pyfunc``;
- the no-op twin of each (``benchmarks.noop:svc``, ``MINDTRACE_BENCH_NOOP=1``, ``PyfuncNoop``): the same
  framework and settings doing no work, that server's ceiling. The variants share ``mindtrace``'s.

Commands hold ``{port}``, filled in when the server starts.

>>> [s.name for s in lineup(("mindtrace", "fastapi"), Path("bin"), 2, "mnist-mlp:v1-abc", Path("work"))]
['mindtrace', 'fastapi', 'mindtrace no-op', 'fastapi no-op']
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# The variants of this service: the one setting each changes.
VARIANTS = {
    "mindtrace-nobatch": {"MINDTRACE__SERVICE__BATCH_MAX_REQUESTS": "1"},
    "mindtrace-nolog": {"MINDTRACE__MONITORING__SAMPLE": "0"},
}
DEFAULT_SERVERS = ("mindtrace", "mindtrace-nobatch", "fastapi", "mlflow")
SERVERS = (*DEFAULT_SERVERS, "mindtrace-nolog")
NOOP = " no-op"


@dataclass
class Server:
    """One server of the run: how to start it, and once started, where it listens."""

    name: str  # its key, with " no-op" for a twin
    command: list[str]
    env: dict[str, str]
    ready: str  # the path that answers 200 once it serves
    api: str  # the request protocol: "mindtrace" (/inference) or "mlflow" (/invocations)
    port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)
    note: str = ""  # why it did not run

    @property
    def noop(self) -> bool:
        return self.name.endswith(NOOP)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [part.replace("{port}", str(self.port)) for part in self.command]


def server(key: str, noop: bool, bin_dir: Path, workers: int, model_tag: str, work: Path) -> Server:
    """How to start server ``key`` (one of ``SERVERS``), or its no-op twin, serving ``model_tag``.

    ``work`` holds the pyfuncs (``pyfunc``, ``pyfunc-noop``) and each service's own job folder.
    """
    name = key + NOOP if noop else key
    if key.startswith("mindtrace"):
        target = "benchmarks.noop:svc" if noop else "service:svc"
        command = [str(bin_dir / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", "{port}"]
        # Each service keeps its own jobs: the retraining run must not be picked up by its batch-off twin.
        env = {"MINDTRACE__DIR_PATHS__JOBS": str(work / "jobs" / key), **VARIANTS.get(key, {})}
        return Server(name, command, env, "/readyz", "mindtrace")
    if key == "fastapi":
        command = [
            str(bin_dir / "uvicorn"), "benchmarks.rivals:fastapi_app", "--host", "127.0.0.1",
            "--port", "{port}", "--workers", str(workers), "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        env = {"MINDTRACE_BENCH_NOOP": "1"} if noop else {"MINDTRACE_BENCH_MODEL": model_tag}
        return Server(name, command, env, "/livez", "mindtrace")
    if key == "mlflow":
        model = work / ("pyfunc-noop" if noop else "pyfunc")
        command = [
            str(bin_dir / "mlflow"), "models", "serve", "-m", str(model), "--env-manager", "local",
            "-h", "127.0.0.1", "-p", "{port}", "-w", str(workers),
        ]  # fmt: skip
        return Server(name, command, {}, "/ping", "mlflow")
    raise ValueError(f"unknown server {key!r}; choose from {', '.join(SERVERS)}")


def family(name: str) -> str:
    """The server whose no-op twin ``name`` is compared with: a variant's is ``mindtrace``'s.

    >>> family("mindtrace-nolog"), family("fastapi")
    ('mindtrace', 'fastapi')
    """
    return "mindtrace" if name in VARIANTS else name


def lineup(keys: tuple[str, ...], bin_dir: Path, workers: int, model_tag: str, work: Path) -> list[Server]:
    """The servers ``keys``, then the no-op twin of each (a variant shares ``mindtrace``'s)."""
    twins = dict.fromkeys(family(key) for key in keys)
    return [
        *(server(key, False, bin_dir, workers, model_tag, work) for key in keys),
        *(server(key, True, bin_dir, workers, model_tag, work) for key in twins),
    ]
