"""Each worker's side of the prediction log: ids for every answer, and batched writes off the request path.

``record`` runs on the event loop for every answered request: it makes the prediction ids (one random
draw per request) and, for a sampled request, appends one tuple holding the request's arrays to a queue;
nothing else. A writer thread turns the queue into rows and writes them every ``FLUSH_SECONDS``
(``mindtrace.monitoring.store``), or as soon as ``FLUSH_ROWS`` predictions wait, in transactions of about
that many rows, and applies retention every 30 s. Bounded writes keep the worker small: at 18,000 logged
predictions a second a worker, one-second transactions (the queue, its concatenated copy and SQLite's pages
at once) left each worker about 80 MB larger (DESIGN.md, "The prediction log's memory"). So a worker killed
mid-write loses at most its unwritten batch, and the log is never half-written (a transaction is atomic).

A queued tuple holds the ids as one string, the model, the version and the two arrays: objects the garbage
collector does not track (numpy arrays are not containers), so once the collector has seen such a tuple it
stops tracking it, and logging adds nothing for full collections to walk (DESIGN.md, "Garbage
collection"). A flush writes one row per version, its columns as blobs (``mindtrace.monitoring.store``).

During a rollout the recorder also logs the candidate's shadow predictions of the requests whose answers
the sample logged (``record_shadow``, under the answers' ids), and every flush writes each version's
model-call counts, agreement and latency histogram for that rollout (``observe``): the evidence it decides
on, shared by all workers and replicas.

>>> recorder = Recorder(PredictionLog(path), 1.0, flush_seconds=1, max_pending=50_000)  # doctest: +SKIP
>>> ids, logged = recorder.record(pixels, probs, "mnist-mlp", "3")                      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque

import numpy as np

from mindtrace.monitoring import latency
from mindtrace.monitoring.store import Batch, PredictionLog, Retention, Stats, new_ids, split_ids
from service import metrics
from service.batching import Served

log = logging.getLogger("mindtrace.service")
RETENTION_EVERY_SECONDS = 30.0  # deleting old rows is cheap, but not worth a transaction at every flush
FLUSH_ROWS = 4096  # predictions a transaction holds, about: 3.4 MB of pixels


class Recorder:
    """Logs a sample of predictions into ``store`` from a background thread; see the module docstring."""

    def __init__(
        self,
        store: PredictionLog,
        sample: float,
        flush_seconds: float,
        max_pending: int,
        retention: Retention | None = None,
    ):
        self.store = store
        self.sample = sample
        self.flush_seconds = flush_seconds
        self.max_pending = max_pending
        self.retention = retention
        # (ids, model, version, pixels (None for shadow predictions), probabilities, role)
        self._pending: deque[tuple[str, str, str, np.ndarray | None, np.ndarray, str]] = deque()
        # (rollout, model, version, role) -> [requests, images, errors, agreed, latency histogram], since the
        # last flush
        self._stats: dict[tuple[str, str, str, str], list] = {}
        self._stats_lock = threading.Lock()
        # Queued rows minus taken rows is what waits; each count has one writer thread, so neither races.
        self._queued_rows = self._taken_rows = 0
        self._lock = threading.Lock()  # one flush at a time: the writer thread's, or one asked for
        self._stop = threading.Event()
        self._due = threading.Event()  # FLUSH_ROWS predictions wait: write them before the timer says so
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="prediction-log", daemon=True)
        self._thread.start()

    def record(
        self, pixels: np.ndarray, probs: np.ndarray, model: str, version: str
    ) -> tuple[list[str], bool]:
        """The prediction ids of one answered request (``pixels`` [n, 28, 28], ``probs`` [n, 10]), and
        whether the request was sampled (queued for the log)."""
        text = new_ids(len(probs))
        sampled = self.sample >= 1 or random.random() < self.sample
        if sampled:
            self._queue(text, model, version, pixels, probs, "answer")
        return split_ids(text), sampled

    def record_shadow(
        self,
        rollout: str,
        served: Served,
        probs: np.ndarray,
        answered: np.ndarray,
        logged: np.ndarray,
        ids: str,
    ) -> None:
        """Count how many of a candidate's shadow predictions agree with the labels the clients got
        (``answered``), and queue those whose answers were logged (the mask ``logged``) under their
        answers' ``ids`` (one string): like the answers, the shadow follows the log's sample. Without the
        pixels: the answers' rows hold them."""
        if ids:
            self._queue(ids, served.name, served.version, None, probs[logged], "shadow")
        agreed = int((probs.argmax(axis=1) == answered).sum())
        with self._stats_lock:
            self._entry((rollout, served.name, served.version, "shadow"))[3] += agreed

    def observe(
        self,
        rollout: str,
        served: Served,
        role: str,
        requests: int,
        images: int,
        seconds: float,
        failed: bool,
    ) -> None:
        """Count one model call of ``served`` during ``rollout`` (``service.batching.CallObserver``)."""
        with self._stats_lock:
            entry = self._entry((rollout, served.name, served.version, role))
            entry[0] += requests
            entry[1] += images
            entry[2] += requests if failed else 0
            entry[4][latency.bucket(seconds)] += requests

    def _entry(self, key: tuple[str, str, str, str]) -> list:
        entry = self._stats.get(key)
        if entry is None:
            entry = self._stats[key] = [0, 0, 0, 0, latency.empty()]
        return entry

    def _queue(
        self, ids: str, model: str, version: str, pixels: np.ndarray | None, probs: np.ndarray, role: str
    ) -> None:
        n = len(probs)
        if self._queued_rows - self._taken_rows + n > self.max_pending:
            metrics.log_dropped(n)
        else:
            self._pending.append((ids, model, version, pixels, probs, role))
            self._queued_rows += n
            if self._queued_rows - self._taken_rows >= FLUSH_ROWS and not self._due.is_set():
                self._due.set()

    def flush(self) -> int:
        """Write everything queued so far, now, in transactions of about ``FLUSH_ROWS`` predictions; how many
        predictions were written."""
        with self._lock:
            self._flush_stats()
            written = 0
            while self._pending:
                written += self._write(self._take())
            return written

    def _take(self) -> list[tuple]:
        """Queued entries from the oldest, whole requests, until they hold ``FLUSH_ROWS`` predictions."""
        taken, rows = [], 0
        while self._pending and rows < FLUSH_ROWS:
            entry = self._pending.popleft()
            taken.append(entry)
            rows += len(entry[4])
        self._taken_rows += rows
        return taken

    def _write(self, taken: list[tuple]) -> int:
        by_version: dict[tuple[str, str, str], list[tuple]] = {}
        for entry in taken:  # in time order, as the log wants each version's predictions
            by_version.setdefault((entry[1], entry[2], entry[5]), []).append(entry)
        batches = [
            Batch(
                ids=split_ids("".join(e[0] for e in entries)),
                model=model,
                version=version,
                probabilities=np.concatenate([e[4] for e in entries]),
                pixels=None if role == "shadow" else np.concatenate([e[3] for e in entries]),
                role=role,
            )
            for (model, version, role), entries in by_version.items()
        ]
        n = sum(len(b.ids) for b in batches)
        try:
            self.store.write(batches)
        except Exception as exc:  # noqa: BLE001 - a full disk or a locked file must not stop serving
            log.error("could not write %d predictions to the prediction log: %s", n, exc)
            metrics.log_dropped(n)
            return 0
        metrics.log_written(n)
        return n

    def _flush_stats(self) -> None:
        with self._stats_lock:
            taken, self._stats = self._stats, {}
        stats = [
            Stats(rollout, model, version, role, requests, images, errors, agreed, histogram)
            for (rollout, model, version, role), (
                requests,
                images,
                errors,
                agreed,
                histogram,
            ) in taken.items()
        ]
        try:
            self.store.write_stats(stats)
        except Exception as exc:  # noqa: BLE001 - as for predictions: serving goes on
            log.error("could not write serving statistics to the prediction log: %s", exc)

    def stop(self) -> None:
        """Write what is queued and stop the thread (the worker is shutting down)."""
        self._stop.set()
        self._due.set()
        if self._thread is not None:
            self._thread.join(timeout=self.flush_seconds + 5)
        self.flush()

    def _loop(self) -> None:
        retention_at = time.monotonic() + RETENTION_EVERY_SECONDS
        while not self._stop.is_set():
            self._due.wait(self.flush_seconds)
            self._due.clear()
            self.flush()
            if self.retention and time.monotonic() >= retention_at:
                retention_at = time.monotonic() + RETENTION_EVERY_SECONDS
                try:
                    self.store.apply_retention(self.retention)
                except Exception as exc:  # noqa: BLE001 - retried at the next round
                    log.error("could not apply the prediction log's retention: %s", exc)
