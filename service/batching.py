"""The served model and the adaptive batching in front of it.

Requests queue their preprocessed images, and one model call at a time takes every request that queued while
the previous call ran (up to ``max_requests``). Under light load a request runs at once, alone; under heavy
load batches grow by themselves to match the load, with no timer and no polling. Each request is one job
whatever its image count, so a request is never split across two model calls. DESIGN.md compares this with
BentoML's own dispatcher.

``current`` is one immutable ``Served`` object, replaced by a single assignment (``service.watcher`` does it
when the champion moves). A model call reads it once, so every request in a batch is answered by one model
and told which; a swap can never mix two.

During a rollout (``mindtrace.rollout``) ``candidate`` holds a second model. A request routed to it queues
like any other; a batch then makes one call per version, each request answered by the version it was sent
to (by the champion if the candidate left meanwhile). Shadow predictions queue apart and run only when no
request waits, so they never delay an answer by more than the one shadow call in progress.
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
    from mindtrace.rollout import Rollout

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


# After each model call during a rollout: its id, the model, its role (answer or shadow), the requests and
# images, the call's duration in seconds, and whether it failed.
CallObserver = Callable[[str, Served, str, int, int, float, bool], None]
# After each shadow call: the rollout's id, the candidate, its probabilities, the labels the requests were
# answered with, which images' answers the prediction log sampled, and their ids (one string).
ShadowSink = Callable[[str, Served, np.ndarray, np.ndarray, np.ndarray, str], None]
MAX_SHADOW_IMAGES = 4096  # shadow work waiting beyond this is dropped: the answers come first


@dataclass
class _Job:
    pixels: np.ndarray
    future: asyncio.Future[tuple[np.ndarray, Served]]
    queued_at: float
    candidate: bool = False


@dataclass
class _Shadow:
    pixels: np.ndarray
    answered: np.ndarray  # the labels the clients were given
    # The answers' prediction ids as one string (mindtrace.monitoring.store.new_ids), None when the log's
    # sample left the answer out: its shadow prediction is then counted but not logged either.
    ids: str | None


class Predictor:
    """Holds the served model and batches the calls to it.

    >>> probs, served = await predictor.predict(pixels)   # doctest: +SKIP
    """

    def __init__(
        self,
        max_requests: int,
        max_latency_ms: int,
        observe: CallObserver | None = None,
        shadow_sink: ShadowSink | None = None,
    ):
        self.current: Served | None = None
        self.candidate: Served | None = None
        self.rollout: Rollout | None = None  # the running rollout that ``candidate`` belongs to
        self.max_requests = max_requests
        self.max_wait = max_latency_ms / 1000
        self.observe = observe
        self.shadow_sink = shadow_sink
        self._queue: deque[_Job] = deque()
        self._shadow: deque[_Shadow] = deque()
        self._shadow_images = 0
        self._running = False

    async def predict(self, pixels: np.ndarray, candidate: bool = False) -> tuple[np.ndarray, Served]:
        """Probabilities ``[n, 10]`` for uint8 pixels ``[n, 28, 28]``, and the model that computed them:
        the champion, or the rollout's candidate when asked for and there is one."""
        if self.current is None:
            raise NotServing()
        loop = asyncio.get_running_loop()
        job = _Job(pixels, loop.create_future(), time.monotonic(), candidate)
        self._queue.append(job)
        self._wake(loop)
        return await job.future

    def shadow(self, pixels: np.ndarray, answered: np.ndarray, ids: str | None) -> bool:
        """Queue an answered request for the candidate to predict off the answer path: its pixels, the labels
        it was answered with and its prediction ids (None: not in the log's sample); False when the shadow
        queue is full (the work is dropped)."""
        if self._shadow_images + len(pixels) > MAX_SHADOW_IMAGES:
            return False
        self._shadow.append(_Shadow(pixels, answered, ids))
        self._shadow_images += len(pixels)
        self._wake(asyncio.get_running_loop())
        return True

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._running:
            self._running = True
            loop.create_task(self._drain())

    async def _drain(self) -> None:
        """Run batches until the queue is empty; requests that arrive meanwhile make up the next batch.
        Shadow work runs when no request waits."""
        try:
            while self._queue or self._shadow:
                # Yield at least once, so requests read while the last batch ran join this one; and again,
                # up to four turns, while requests read in the same turn are still on their way in.
                for _ in range(4):
                    queued = len(self._queue)
                    await asyncio.sleep(0)
                    if len(self._queue) == queued:
                        break
                if self._queue:
                    batch = self._take_batch()
                    if batch:
                        self._run(batch)
                elif self._shadow:
                    self._run_shadow()
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
        champion, candidate = self.current, self.candidate  # read once: each group is answered by one model
        assert champion is not None
        if candidate is None or not any(job.candidate for job in batch):
            self._call(champion, batch)
            return
        self._call(champion, [job for job in batch if not job.candidate])
        self._call(candidate, [job for job in batch if job.candidate])

    def _call(self, served: Served, jobs: list[_Job]) -> None:
        """One model call for ``jobs``, each of which gets its rows of the result, or the call's error."""
        if not jobs:
            return
        pixels = jobs[0].pixels if len(jobs) == 1 else np.concatenate([job.pixels for job in jobs])
        started = time.perf_counter()
        try:
            # On the event loop itself: a worker has one core and one torch thread, so a model thread could
            # not run beside the loop, and handing batches to one cost 13% more CPU per request (DESIGN.md).
            probs = served.classify(pixels)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
            self._observed(served, "answer", jobs, len(pixels), started, failed=True)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self._observed(served, "answer", jobs, len(pixels), started, failed=False)
        metrics.count_predictions(probs.argmax(axis=1))
        start = 0
        for job in jobs:
            end = start + len(job.pixels)
            if not job.future.done():
                job.future.set_result((probs[start:end], served))
            start = end

    def _run_shadow(self) -> None:
        """The candidate predicts the queued shadow work in one call; the sink logs it."""
        work: list[_Shadow] = []
        images = 0
        while self._shadow and images < 1024:
            item = self._shadow.popleft()
            work.append(item)
            images += len(item.pixels)
        self._shadow_images -= images
        candidate, rollout = self.candidate, self.rollout
        if candidate is None or rollout is None or self.shadow_sink is None:
            return  # the rollout ended meanwhile
        pixels = np.concatenate([item.pixels for item in work])
        started = time.perf_counter()
        try:
            probs = candidate.classify(pixels)
        except Exception:  # noqa: BLE001 - a failing candidate is evidence, not a reason to stop serving
            self._observed(candidate, "shadow", work, images, started, failed=True)
            return
        self._observed(candidate, "shadow", work, images, started, failed=False)
        answered = np.concatenate([item.answered for item in work])
        logged = np.concatenate([np.full(len(item.pixels), item.ids is not None) for item in work])
        ids = "".join(item.ids for item in work if item.ids is not None)
        self.shadow_sink(rollout.id, candidate, probs, answered, logged, ids)

    def _observed(
        self, served: Served, role: str, jobs: list, images: int, started: float, failed: bool
    ) -> None:
        """Count the call for the running rollout's evidence (nothing is counted outside rollouts)."""
        rollout = self.rollout
        if self.observe is not None and rollout is not None:
            seconds = time.perf_counter() - started
            self.observe(rollout.id, served, role, len(jobs), images, seconds, failed)
