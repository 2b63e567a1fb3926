"""The served model and the adaptive batching in front of it.

Requests queue their preprocessed images, and one model call at a time takes every request that queued while
the previous call ran (up to ``max_requests``). Under light load a request runs at once, alone; under heavy
load batches grow by themselves to match the load, with no timer and no polling. Each request is one job
whatever its image count, so a request is never split across two model calls. DESIGN.md compares this with
BentoML's own dispatcher.

``current`` is one immutable ``Served`` object, replaced by a single assignment (``service.watcher`` does it
when the champion moves). A model call reads it once, so every request in a batch is answered by one model
and told which; a swap can never mix two.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from service import metrics

if TYPE_CHECKING:
    from mindtrace.monitoring import Reference

# uint8 pixels [n, 28, 28] -> probabilities [n, 10]: mindtrace.runtime.OnnxClassifier in the service.
Classify = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Served:
    """A loaded model, where it came from, and its drift reference (None for a stand-in in a test)."""

    classify: Classify
    name: str
    version: str
    tag: str
    loaded_at: float
    reference: Reference | None = None


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
            probs = served.classify(pixels)
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
