"""The service's settings, read once from the ``[SERVICE]`` section of the mindtrace config.

Light on purpose: BentoML's supervising process imports the service module to read its configuration, and
the no-op twin of the benchmark shares these settings, so nothing here may pull in a model runtime or MLflow.
"""

from __future__ import annotations

import gc
import os
import threading
from typing import Any

from mindtrace.config import Config

settings = Config()
SETTINGS = settings["SERVICE"]

SERVICE_CONFIG: dict[str, Any] = {
    "workers": SETTINGS.getint("WORKERS") or "cpu_count",
    # BentoML arms a timer of this length for every request and never cancels it: the timers, and the futures
    # they hold, stay alive this long (DESIGN.md, "Garbage collection"), so it is kept short.
    "traffic": {"timeout": SETTINGS.getfloat("REQUEST_TIMEOUT_SECONDS")},
    "logging": {"access": {"enabled": SETTINGS.getboolean("ACCESS_LOG")}},
    # BentoML opens an OpenTelemetry span per request even with no exporter configured: off unless asked for.
    "tracing": {} if SETTINGS.getboolean("TRACING") else {"excluded_urls": [".*"]},
}
# One worker has no sibling to hand connections to (service.spread).
SPREAD_CONNECTIONS = SETTINGS.getboolean("SPREAD_CONNECTIONS") and SETTINGS.getint("WORKERS") != 1
GUARD_OPTIONS: dict[str, Any] = {
    "max_body_bytes": SETTINGS.getint("MAX_BODY_BYTES"),
    "api_token": os.environ.get("MINDTRACE_API_TOKEN", ""),
    "inference_token": os.environ.get("MINDTRACE_INFERENCE_TOKEN", ""),
}


def configured_tokens() -> set[str]:
    """Which of the guard's tokens are set: ``"api"``, ``"inference"`` (``service.guard.guarded_by``)."""
    return {kind for kind in ("api", "inference") if GUARD_OPTIONS[f"{kind}_token"]}


def settle_the_collector() -> None:
    """Freeze a worker's start-up heap and raise the collector's thresholds (``GC_THRESHOLDS``).

    Everything loaded at start-up lives as long as the worker: frozen, the collector never walks it again (a
    full collection over it stopped a worker for 300-490 ms). Raised thresholds keep full collections rare
    under load (DESIGN.md, "Garbage collection"). Called once a worker has loaded, from its start-up hook.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*(int(n) for n in SETTINGS.getlist("GC_THRESHOLDS")))


class RegistryGarbage:
    """Free what MLflow's store leaves behind: called after every registry call of a worker.

    Each call through MLflow's SQLAlchemy store leaves reference cycles (about 650 objects: compiled SQL
    expressions, sqlparse token trees; found with ``gc.DEBUG_SAVEALL``). With full collections made rare
    (``GC_THRESHOLDS``), they outlived their call in the oldest generation, and a worker answering registry
    reads grew about 0.65 MB a second. So every ``calls`` registry calls end with a full collection. The
    first call ends with one too, and a freeze: that call loaded MLflow's store (SQLAlchemy's mappers, a
    hundred thousand objects in a worker that had not needed the registry before), which then lives as long
    as the worker, out of every later collection's way (DESIGN.md, "Garbage collection").

    >>> tidy = RegistryGarbage(calls=200)
    >>> tidy()   # after a registry call   # doctest: +SKIP
    """

    def __init__(self, calls: int):
        self.calls = calls
        self._since = 0  # registry calls since the last collection
        self._froze = False
        self._lock = threading.Lock()  # registry calls end on several threads

    def __call__(self) -> None:
        with self._lock:
            self._since += 1
            if self._froze and self._since < self.calls:
                return
            self._since = 0
            gc.collect()
            if not self._froze:
                self._froze = True
                gc.freeze()
