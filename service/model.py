"""The served model: adaptive batching in front of it, and a watcher that hot-swaps it.

Batching: requests queue their preprocessed images, and one model call at a time takes every request that
queued while the previous call ran (up to ``max_requests``). Under light load a request runs at once, alone;
under heavy load batches grow by themselves to match the load, with no timer and no polling. Each request is
one job whatever its image count, so a request is never split across two model calls. DESIGN.md compares
this with BentoML's own dispatcher.

Hot-swap: ``current`` is one immutable ``Served`` object, replaced by a single assignment. A model call reads
it once, so every request in a batch is answered by one model and told which; a swap can never mix two.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from mindtrace.config import Config
from mindtrace.models import MLPNet
from mindtrace.predict import probabilities
from mindtrace.registry import Registry
from mindtrace.registry.bento import bento_model_name, import_version, load_bento_mlp
from mindtrace.registry.errors import NotFoundError, RegistryError
from service import metrics

log = logging.getLogger("mindtrace.service")


@dataclass(frozen=True)
class Served:
    """A loaded model and where it came from."""

    net: MLPNet
    name: str
    version: str
    tag: str
    loaded_at: float


class NotServing(RuntimeError):
    """There is no model to answer with."""


class Overloaded(RuntimeError):
    """A request waited in the batching queue longer than its latency budget."""


@dataclass
class _Job:
    pixels: np.ndarray
    future: asyncio.Future[tuple[np.ndarray, Served]]
    queued_at: float


class Predictor:
    """Holds the served model and batches the calls to it.

    >>> probs, served = await predictor.predict(pixels)   # doctest: +SKIP
    """

    def __init__(self, max_requests: int, max_latency_ms: int):
        self.current: Served | None = None
        self.max_requests = max_requests
        self.max_wait = max_latency_ms / 1000
        self._queue: deque[_Job] = deque()
        self._running = False

    async def predict(self, pixels: np.ndarray) -> tuple[np.ndarray, Served]:
        """Probabilities ``[n, 10]`` for uint8 pixels ``[n, 28, 28]``, and the model that computed them."""
        if self.current is None:
            raise NotServing()
        loop = asyncio.get_running_loop()
        job = _Job(pixels, loop.create_future(), time.monotonic())
        self._queue.append(job)
        if not self._running:
            self._running = True
            loop.create_task(self._drain())
        return await job.future

    async def _drain(self) -> None:
        """Run batches until the queue is empty; requests that arrive meanwhile make up the next batch."""
        try:
            while self._queue:
                # Yield at least once, so requests read while the last batch ran join this one; and again,
                # up to four turns, while requests read in the same turn are still on their way in.
                for _ in range(4):
                    queued = len(self._queue)
                    await asyncio.sleep(0)
                    if len(self._queue) == queued:
                        break
                batch = self._take_batch()
                if batch:
                    self._run(batch)
        finally:
            self._running = False

    def _take_batch(self) -> list[_Job]:
        now, batch = time.monotonic(), []
        while self._queue and len(batch) < self.max_requests:
            job = self._queue.popleft()
            if job.future.done():  # the client went away
                continue
            if now - job.queued_at > self.max_wait:
                job.future.set_exception(Overloaded("the request waited longer than the batching budget"))
                continue
            batch.append(job)
        return batch

    def _run(self, batch: list[_Job]) -> None:
        served = self.current  # read once: the whole batch is answered by this model
        assert served is not None
        pixels = np.concatenate([job.pixels for job in batch])
        try:
            # On the event loop itself: a worker has one core and one torch thread, so a model thread could
            # not run beside the loop, and handing batches to one cost 13% more CPU per request (DESIGN.md).
            probs = probabilities(served.net, pixels)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        metrics.count_predictions(probs.argmax(axis=1))
        start = 0
        for job in batch:
            end = start + len(job.pixels)
            if not job.future.done():
                job.future.set_result((probs[start:end], served))
            start = end


class ChampionWatcher:
    """Keeps ``predictor.current`` on the version the alias points to, checking every ``interval`` seconds.

    A version is imported into the BentoML store, loaded and tried on a blank image before it is swapped in;
    one that fails stays out, the old model keeps serving, and ``last_error`` says why.
    """

    def __init__(self, predictor: Predictor, settings: Config):
        self.predictor = predictor
        section = settings["SERVICE"]
        self.alias = section["MODEL_ALIAS"]
        self.interval = section.getfloat("SWAP_POLL_SECONDS")
        self.registry = Registry(config=settings)
        self.name = self.registry.model_name(None)
        self.last_error: str | None = None
        self._failed: tuple[str, float] | None = None  # (version, when): retried after a while, not each poll
        self._wake = threading.Event()
        self._lock = threading.RLock()  # the watcher thread and alias moves made through the API

    def start(self) -> None:
        """Load the model to serve now, then keep following the alias in a background thread."""
        self.check()
        if self.predictor.current is None:
            self._serve_newest_in_store()
        threading.Thread(target=self._loop, name="champion-watcher", daemon=True).start()

    def wake(self) -> None:
        """Check now rather than at the next tick (after an alias move made through this service)."""
        self._wake.set()

    def check(self) -> None:
        """One look at the alias; swap when it points to a version other than the served one."""
        with self._lock:
            try:
                version = self.registry.alias_target(self.name, self.alias)
            except NotFoundError:
                version = None  # nothing registered yet
            except RegistryError as exc:
                self._note_error(f"cannot read the registry: {exc}", swap=False)
                return
            current = self.predictor.current
            if version is None or (current is not None and current.version == version):
                return
            if self._failed and self._failed[0] == version and time.monotonic() - self._failed[1] < 30:
                return
            try:
                self.swap_to(version)
            except Exception as exc:  # noqa: BLE001 - any failure to load leaves the old model serving
                self._failed = (version, time.monotonic())
                self._note_error(f"version {version} of {self.name} was not swapped in: {exc}", swap=True)

    def swap_to(self, version: str) -> Served:
        """Import, load, try and serve ``version``; on any failure, raise and leave the served model alone."""
        return self.serve(load_version(self.name, version, self.registry))

    def serve(self, served: Served) -> Served:
        """Swap in a model that is already loaded and checked."""
        with self._lock:
            previous = self.predictor.current
            self.predictor.current = served
            self.last_error, self._failed = None, None
        metrics.model_swapped(previous, served)
        log.info("now serving %s version %s (%s)", served.name, served.version, served.tag)
        return served

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad check
                log.exception("checking the %s alias failed", self.alias)

    def _serve_newest_in_store(self) -> None:
        """With no champion to be found, serve the newest import of this model (e.g. inside a Bento)."""
        import bentoml
        from bentoml.exceptions import NotFound

        try:
            imports = bentoml.models.list(bento_model_name(self.name))
        except NotFound:
            imports = []
        for model in sorted(imports, key=lambda m: m.info.creation_time, reverse=True):
            try:
                net, _ = load_bento_mlp(model)
            except ValueError as exc:
                log.warning("skipping %s: %s", model.tag, exc)
                continue
            mlflow = model.info.metadata.get("mlflow", {})
            self.predictor.current = Served(
                net, self.name, str(mlflow.get("version", "?")), str(model.tag), time.time()
            )
            metrics.model_swapped(None, self.predictor.current)
            log.warning(
                "registry has no %s for %s; serving %s from the BentoML store",
                self.alias,
                self.name,
                model.tag,
            )
            return
        log.warning(
            "no model to serve: the registry has no %s for %s and the BentoML store has none",
            self.alias,
            self.name,
        )

    def _note_error(self, message: str, swap: bool) -> None:
        if message != self.last_error:
            log.error(message)
        self.last_error = message
        if swap:
            metrics.swap_failed()


def load_version(name: str, version: str, registry: Registry) -> Served:
    """Import registered ``version`` into the BentoML store (once), load it, and check it answers sanely."""
    result = import_version(version, name, registry)
    net, _ = load_bento_mlp(result.tag)
    probs = probabilities(net, np.zeros((2, 28, 28), dtype=np.uint8))
    if probs.shape != (2, 10) or not np.isfinite(probs).all():
        raise ValueError(f"{result.tag} does not produce 10 finite probabilities per image")
    return Served(net, result.name, result.version, result.tag, time.time())
