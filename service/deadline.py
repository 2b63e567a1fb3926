"""The service's registry calls, each given up after a deadline: a registry that does not answer costs a
request seconds, then nothing, while inference (which never touches the registry) keeps serving.

A tracking server is asked with MLflow's own HTTP timeout, but the embedded SQLite store waits up to 20 s for
a lock that another process holds (MLflow's busy timeout, fixed in its code), as long as BentoML lets a
request run. So every call runs in a small thread pool and is given up after ``REGISTRY_TIMEOUT_SECONDS``
(a 503). A call given up on keeps running until the store answers or refuses; while one does, new calls are
refused at once rather than joining the queue, and the first call after it returns finds the store as it is.

>>> registry = Bounded(Registry(), seconds=5)      # doctest: +SKIP
>>> registry.list_models()                          # doctest: +SKIP
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as Late
from typing import Any

from mindtrace.registry.errors import RegistryUnavailableError

# The registry's methods that change it: a call given up on may still be applied.
WRITES = frozenset(
    {"set_alias", "remove_alias", "rollback", "set_version_tags", "register", "delete_version"}
)


class Bounded:
    """``registry`` with every public method bounded by ``seconds``; attributes pass through.

    A write given up on (an alias move) may still be applied when the store answers: the 503 says so, and the
    alias history shows whether it was.
    """

    def __init__(
        self, registry: Any, seconds: float, threads: int = 4, after: Callable[[], None] | None = None
    ):
        self._registry = registry
        self._seconds = seconds
        self._after = after  # run on the call's thread once it returns (service.settings.RegistryGarbage)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="registry")
        self._late = 0  # calls given up on that have not returned yet
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._registry, name)
        if name.startswith("_") or not callable(attr):
            return attr

        @functools.wraps(attr)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            return self._call(attr, *args, **kwargs)

        return bounded

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._late:
                raise RegistryUnavailableError(
                    f"the registry has not answered an earlier request within {self._seconds:g} s and is "
                    "still busy with it (a locked store, a slow server?); retry shortly"
                )
        future = self._pool.submit(self._run, method, *args, **kwargs)
        try:
            return future.result(timeout=self._seconds)
        except Late:
            with self._lock:
                self._late += 1
            future.add_done_callback(self._returned)  # runs at once if it has returned meanwhile
            late = f"the registry did not answer within {self._seconds:g} s (a locked store, a slow server?)"
            if method.__name__ in WRITES:
                late += "; the change may still be applied when it answers: look before you retry"
            raise RegistryUnavailableError(late) from None

    def _run(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        finally:
            if self._after is not None:
                self._after()

    def _returned(self, _: Future) -> None:
        with self._lock:
            self._late -= 1
