"""The prediction log: every logged prediction, its input as the model saw it, and its feedback label.

The embedded store is one SQLite file under ``MINDTRACE_HOME/monitoring``, in WAL mode, so that every
worker of every server sharing the home writes to it at once while readers go on reading. The scale-out
store (PostgreSQL) will implement the same methods.

Predictions are stored a flush at a time: one ``chunks`` row holds a worker's predictions of one version
from one flush, column by column (ids, predicted labels, float32 probabilities, uint8 pixels, each one
blob). One insert per flush rather than one per prediction made logging about ten times cheaper in CPU,
which the service shares with the model (DESIGN.md, "Monitoring", has the figures), and reading a window is
a few blobs turned into arrays. A prediction id starts with its time in milliseconds (``new_ids``), which
finds its chunk by time; ``feedback`` holds one row per labelled prediction, with its input copied, so that
accuracy joins and retraining data are small reads.

>>> import tempfile, numpy as np
>>> store = PredictionLog(Path(tempfile.mkdtemp()) / "predictions.db")
>>> ids = split_ids(new_ids(1))
>>> probs = np.eye(10, dtype=np.float32)[[3]]
>>> store.write([Batch(ids, "mnist-mlp", "1", probs, np.zeros((1, 28, 28), np.uint8))])
>>> store.add_feedback({ids[0]: 3}).accepted
1
>>> store.labelled("mnist-mlp", "1", 100)
(array([3]), array([3]))
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mindtrace.config import Config

SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    n INTEGER NOT NULL,
    ids TEXT NOT NULL,
    labels BLOB NOT NULL,
    probabilities BLOB NOT NULL,
    pixels BLOB NOT NULL,
    role TEXT NOT NULL DEFAULT 'answer'
);
CREATE INDEX IF NOT EXISTS chunks_by_version ON chunks (model, version, last_at);
CREATE INDEX IF NOT EXISTS chunks_by_time ON chunks (first_at, last_at);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    at REAL NOT NULL,
    label INTEGER NOT NULL,
    truth INTEGER NOT NULL,
    truth_at REAL NOT NULL,
    pixels BLOB NOT NULL,
    shadow_version TEXT,
    shadow_label INTEGER
);
CREATE INDEX IF NOT EXISTS feedback_by_version ON feedback (model, version, truth_at);
CREATE TABLE IF NOT EXISTS rollout_stats (
    rollout TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    role TEXT NOT NULL,
    at REAL NOT NULL,
    requests INTEGER NOT NULL,
    images INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    agreed INTEGER NOT NULL,
    latency BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS stats_by_rollout ON rollout_stats (rollout, version);
CREATE TABLE IF NOT EXISTS retrain_triggers (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (model, version)
);
"""
# A writer waits this long for another process's transaction before it gives up on a batch.
BUSY_TIMEOUT_MS = 10_000
TIME_DIGITS = 12  # an id's first hex digits: its time in milliseconds
RANDOM_BYTES = 6  # then 48 random bits, so that a client cannot guess, and label, another's predictions
ID_LENGTH = TIME_DIGITS + 2 * RANDOM_BYTES
PIXELS, CLASSES = 28 * 28, 10
PAGE_SIZE = 16384


def new_ids(n: int, now: float | None = None) -> str:
    """``n`` prediction ids as one string (:func:`split_ids` parts them): each the time in milliseconds
    (12 hex digits), then random hex from one system call.

    >>> len(new_ids(3)), new_ids(1, now=1.5)[:12]
    (72, '0000000005dc')
    """
    stamp = f"{int((time.time() if now is None else now) * 1000):0{TIME_DIGITS}x}"
    random_part = os.urandom(RANDOM_BYTES * n).hex()
    if n == 1:  # most requests: one image
        return stamp + random_part
    step = 2 * RANDOM_BYTES
    return "".join(stamp + random_part[i : i + step] for i in range(0, len(random_part), step))


def split_ids(text: str) -> list[str]:
    """The ids in a string of :func:`new_ids`.

    >>> split_ids("0" * 24 + "f" * 24)
    ['000000000000000000000000', 'ffffffffffffffffffffffff']
    """
    return [text[i : i + ID_LENGTH] for i in range(0, len(text), ID_LENGTH)]


def id_time(prediction_id: str) -> float | None:
    """When a prediction was made, from its id; None for a string that is no id.

    >>> id_time("0000000005dc" + "0" * 12)
    1.5
    """
    if len(prediction_id) != ID_LENGTH:
        return None
    try:
        return int(prediction_id[:TIME_DIGITS], 16) / 1000
    except ValueError:
        return None


def log_path(config: Config) -> Path:
    """Where the embedded prediction log lives: ``[DIR_PATHS] MONITORING/predictions.db``.

    >>> from mindtrace.config import Config
    >>> str(log_path(Config(env={"MINDTRACE_HOME": "/srv/mt"})))
    '/srv/mt/monitoring/predictions.db'
    """
    return config["DIR_PATHS"].getpath("MONITORING") / "predictions.db"


def existing_log(config: Config) -> PredictionLog | None:
    """The embedded prediction log, for reading; None before any service has written one (opening it would
    create an empty log, and its folder, just to read nothing)."""
    path = log_path(config)
    return PredictionLog(path) if path.exists() else None


def feedback_digits(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Every logged input with a feedback label, as training digits: pixels [n, 28, 28] and labels [n]."""
    log = existing_log(config)
    if log is None:
        return np.empty((0, 28, 28), np.uint8), np.empty(0, np.int64)
    return log.labelled_inputs()


@dataclass(frozen=True)
class Batch:
    """Predictions of one model version to log, oldest first: ``n`` ids (from :func:`new_ids`),
    probabilities ``[n, 10]`` and the pixels the model took ``[n, 28, 28]`` (uint8).

    ``role`` is ``answer`` for predictions that answered a client, ``shadow`` for a rollout candidate's
    predictions of the same requests (same ids), made off the answer path. A shadow batch has no pixels:
    the answers' rows under the same ids hold them."""

    ids: Sequence[str]
    model: str
    version: str
    probabilities: np.ndarray
    pixels: np.ndarray | None
    role: str = "answer"


@dataclass(frozen=True)
class Stats:
    """What a version's model calls did during a rollout (since the last flush): requests answered (or
    shadowed), their images, the requests whose call failed, the shadowed images given the answer's label,
    and the calls' latency histogram (``mindtrace.monitoring.latency``), one count per request."""

    rollout: str
    model: str
    version: str
    role: str
    requests: int
    images: int
    errors: int
    agreed: int
    latency: np.ndarray


@dataclass
class FeedbackResult:
    """What one feedback call did: labels stored, ids whose earlier label was replaced, ids not logged."""

    accepted: int = 0
    replaced: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Retention:
    """How long predictions are kept: at most ``max_age_seconds`` old and about the newest ``max_rows``
    (whole flushes are removed; 0: no bound)."""

    max_age_seconds: float
    max_rows: int


class PredictionLog:
    """The SQLite prediction log at ``path`` (created with its folder on first use); safe to share between
    threads (the service's writer thread and its request threads) and processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._set_up()

    def _set_up(self) -> None:
        """Create the file, or bring an older one up to date, while other processes may do the same: a
        server's workers all open the log as they start."""
        give_up = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                with self._connect() as db:
                    # Both persistent, and the page size only takes on a new file, before WAL mode: a flush's
                    # blobs span fewer pages of 16 kB than of 4 kB, which halved the CPU a flush takes.
                    db.execute(f"PRAGMA page_size={PAGE_SIZE}")
                    db.execute("PRAGMA journal_mode=WAL")
                break
            # Two connections switching a new file to WAL at once: SQLite refuses one at once rather than
            # wait out the busy timeout (waiting could deadlock), and the refused one asks again.
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > give_up:
                    raise
                time.sleep(0.01)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # the write lock first (waiting its turn): no one changes the
            for statement in SCHEMA.split(";"):  # schema between the checks below and the changes
                db.execute(statement)
            # A log written before rollouts: its predictions all answered, none shadowed.
            if "role" not in {row[1] for row in db.execute("PRAGMA table_info(chunks)")}:
                db.execute("ALTER TABLE chunks ADD COLUMN role TEXT NOT NULL DEFAULT 'answer'")
            if "shadow_version" not in {row[1] for row in db.execute("PRAGMA table_info(feedback)")}:
                db.execute("ALTER TABLE feedback ADD COLUMN shadow_version TEXT")
                db.execute("ALTER TABLE feedback ADD COLUMN shadow_label INTEGER")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, its block one transaction: committed when it ends, rolled back on error.

        One connection per thread, kept open: SQLite connections belong to one thread, and closing the
        last one makes SQLite copy the whole write-ahead log back into the file.
        """
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000)
            # NORMAL in WAL mode: a committed flush survives a killed process; only power loss can drop the
            # last transactions, never corrupt the file.
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        with db:
            yield db

    # --- writes ---------------------------------------------------------------------------------------------

    def write(self, batches: Sequence[Batch]) -> None:
        """Add ``batches`` in one transaction: all of them or, if the process dies, none."""
        rows = [_chunk(b) for b in batches if len(b.ids)]
        if rows:
            with self._connect() as db:
                db.executemany(
                    "INSERT INTO chunks (model, version, first_at, last_at, n, ids, labels, probabilities,"
                    " pixels, role) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )

    def write_stats(self, stats: Sequence[Stats], at: float | None = None) -> None:
        """Add one flush's rollout statistics, one row per rollout, version and role."""
        at = time.time() if at is None else at
        rows = [
            (s.rollout, s.model, s.version, s.role, at, s.requests, s.images, s.errors, s.agreed,
             s.latency.astype("<i8").tobytes())
            for s in stats
        ]  # fmt: skip
        if rows:
            with self._connect() as db:
                db.executemany(
                    "INSERT INTO rollout_stats (rollout, model, version, role, at, requests, images, errors,"
                    " agreed, latency) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )

    def add_feedback(self, labels: Mapping[str, int], at: float | None = None) -> FeedbackResult:
        """Store true ``labels`` by prediction id; all or nothing when an id is unknown (nothing is stored).

        A second label for an id replaces the first; the result names such ids.
        """
        at = time.time() if at is None else at
        result = FeedbackResult()
        with self._connect() as db:
            found = {pid: self._find(db, pid) for pid in labels}
            result.unknown = [pid for pid, row in found.items() if row is None]
            if result.unknown:
                return result
            earlier = {
                pid for pid in labels if db.execute("SELECT 1 FROM feedback WHERE id = ?", (pid,)).fetchone()
            }
            result.replaced = [pid for pid in labels if pid in earlier]
            # A rollout's candidate may have predicted the same request in shadow: the label scores it too.
            shadow = {pid: self._find(db, pid, "shadow") for pid in labels}
            db.executemany(
                "INSERT INTO feedback (id, model, version, at, label, truth, truth_at, pixels,"
                " shadow_version, shadow_label) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET truth = excluded.truth, truth_at = excluded.truth_at,"
                " shadow_version = coalesce(excluded.shadow_version, shadow_version),"
                " shadow_label = coalesce(excluded.shadow_label, shadow_label)",
                [
                    (pid, *found[pid][:3], found[pid][3], labels[pid], at, found[pid][4],
                     *((shadow[pid][1], shadow[pid][3]) if shadow[pid] else (None, None)))
                    for pid in labels
                ],
            )  # fmt: skip
            result.accepted = len(labels)
        return result

    def _find(self, db: sqlite3.Connection, pid: str, role: str = "answer") -> tuple | None:
        """(model, version, time, predicted label, pixels) of a logged prediction (the answer, or a shadow
        prediction of the same request, whose pixels are empty), or None."""
        when = id_time(pid)
        if when is None:
            return None
        rows = db.execute(
            "SELECT rowid, model, version, ids FROM chunks WHERE first_at <= ? AND last_at >= ? AND role = ?",
            (when + 0.001, when - 0.001, role),
        ).fetchall()
        for rowid, model, version, ids in rows:
            position = ids.find(pid)
            if position >= 0 and position % ID_LENGTH == 0:
                i = position // ID_LENGTH
                label, pixels = db.execute(
                    "SELECT substr(labels, ?, 1), substr(pixels, ?, ?) FROM chunks WHERE rowid = ?",
                    (i + 1, i * PIXELS + 1, PIXELS, rowid),
                ).fetchone()
                return model, version, when, label[0], pixels
        return None

    def apply_retention(self, retention: Retention, now: float | None = None) -> int:
        """Delete flushes older than the age bound, then the oldest beyond about ``max_rows`` predictions,
        and the feedback of predictions that went; how many predictions went."""
        now = time.time() if now is None else now
        with self._connect() as db:
            deleted = 0
            if retention.max_age_seconds > 0:
                cutoff = (now - retention.max_age_seconds,)
                deleted += db.execute(
                    "SELECT coalesce(sum(n), 0) FROM chunks WHERE last_at < ?", cutoff
                ).fetchone()[0]
                db.execute("DELETE FROM chunks WHERE last_at < ?", cutoff)
                db.execute("DELETE FROM rollout_stats WHERE at < ?", cutoff)
            if retention.max_rows > 0:
                doomed = db.execute(
                    "SELECT rowid, n FROM (SELECT rowid, n, sum(n) OVER (ORDER BY last_at DESC, rowid DESC)"
                    " AS newer FROM chunks) WHERE newer > ?",
                    (retention.max_rows,),
                ).fetchall()
                db.executemany("DELETE FROM chunks WHERE rowid = ?", [(rowid,) for rowid, _ in doomed])
                deleted += sum(n for _, n in doomed)
            oldest = db.execute("SELECT min(first_at) FROM chunks").fetchone()[0]
            db.execute("DELETE FROM feedback WHERE at < ?", (now if oldest is None else oldest,))
        return deleted

    def claim_trigger(self, model: str, version: str, reason: str) -> bool:
        """Record that ``version`` earned its retraining job; False when it already had (atomic, so two
        workers or replicas never both start one)."""
        with self._connect() as db:
            return (
                db.execute(
                    "INSERT OR IGNORE INTO retrain_triggers (model, version, reason, at) VALUES (?, ?, ?, ?)",
                    (model, version, reason, time.time()),
                ).rowcount
                == 1
            )

    def release_trigger(self, model: str, version: str) -> None:
        """Undo a claim whose job could not start, so that a later check tries again."""
        with self._connect() as db:
            db.execute("DELETE FROM retrain_triggers WHERE model = ? AND version = ?", (model, version))

    # --- reads ----------------------------------------------------------------------------------------------

    def count(self, model: str, version: str) -> tuple[int, int]:
        """How many predictions of ``version`` are logged, and how many of them have a feedback label."""
        with self._connect() as db:
            logged = db.execute(
                "SELECT coalesce(sum(n), 0) FROM chunks WHERE model = ? AND version = ?", (model, version)
            ).fetchone()[0]
            labelled = db.execute(
                "SELECT count(*) FROM feedback WHERE model = ? AND version = ?", (model, version)
            ).fetchone()[0]
        return int(logged), int(labelled)

    def versions(self, model: str) -> list[str]:
        """The versions of ``model`` with logged predictions, newest prediction last."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT version FROM chunks WHERE model = ? GROUP BY version ORDER BY max(last_at)", (model,)
            ).fetchall()
        return [row[0] for row in rows]

    def recent(self, model: str, version: str, limit: int) -> np.ndarray:
        """The probabilities [n, 10] of the newest ``limit`` predictions of ``version``, answers and shadow
        predictions alike (the drift check's window). The pixels, stored after them, are not read."""
        probs, total = [], 0
        with self._connect() as db:
            cursor = db.execute(
                "SELECT n, probabilities FROM chunks WHERE model = ? AND version = ?"
                " ORDER BY last_at DESC, rowid DESC",
                (model, version),
            )
            for n, chunk_probs in cursor:
                probs.append(np.frombuffer(chunk_probs, dtype="<f4").reshape(n, CLASSES))
                total += n
                if total >= limit:
                    break
        if not probs:
            return np.empty((0, CLASSES), np.float32)
        # Chunks came newest first, each oldest first inside: put them in time order, keep the newest.
        return np.concatenate(probs[::-1])[-limit:]

    def labelled(self, model: str, version: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """The newest ``limit`` labelled predictions of ``version``: predicted and true labels."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT label, truth FROM feedback WHERE model = ? AND version = ?"
                " ORDER BY truth_at DESC LIMIT ?",
                (model, version, limit),
            ).fetchall()
        array = np.array(rows, dtype=np.int64).reshape(-1, 2)
        return array[:, 0], array[:, 1]

    def rollout_stats(self, rollout: str, version: str) -> tuple[int, int, int, int, np.ndarray]:
        """Requests, images, failed requests, agreeing images and the latency histogram of ``version``
        during ``rollout``."""
        requests = images = errors = agreed = 0
        latency = np.zeros(0, dtype=np.int64)
        with self._connect() as db:
            cursor = db.execute(
                "SELECT requests, images, errors, agreed, latency FROM rollout_stats"
                " WHERE rollout = ? AND version = ?",
                (rollout, version),
            )
            for r, i, e, a, blob in cursor:
                requests, images, errors, agreed = requests + r, images + i, errors + e, agreed + a
                counts = np.frombuffer(blob, dtype="<i8")
                if len(latency) < len(counts):  # the buckets are fixed; this only sizes the first sum
                    latency = np.pad(latency, (0, len(counts) - len(latency)))
                latency[: len(counts)] += counts
        return requests, images, errors, agreed, latency

    def feedback_since(self, model: str, version: str, since: float) -> list[tuple[int, int]]:
        """(predicted, true label) of ``version``'s labelled answers made since ``since``."""
        with self._connect() as db:
            return db.execute(
                "SELECT label, truth FROM feedback WHERE model = ? AND version = ? AND at >= ?",
                (model, version, since),
            ).fetchall()

    def paired_feedback_since(
        self, model: str, version: str, shadow: str, since: float
    ) -> list[tuple[int, int, int]]:
        """(answered label, ``shadow``'s label, true label) of ``version``'s labelled answers made since
        ``since`` that ``shadow`` also predicted: both versions judged on the same requests."""
        with self._connect() as db:
            return db.execute(
                "SELECT label, shadow_label, truth FROM feedback"
                " WHERE model = ? AND version = ? AND shadow_version = ? AND at >= ?",
                (model, version, shadow, since),
            ).fetchall()

    def labelled_inputs(self, since: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Every logged input with a feedback label given after ``since``: pixels [n, 28, 28], true labels."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT pixels, truth FROM feedback WHERE truth_at > ? ORDER BY truth_at", (since,)
            ).fetchall()
        pixels = np.frombuffer(b"".join(r[0] for r in rows), dtype=np.uint8).reshape(-1, 28, 28)
        return pixels, np.array([r[1] for r in rows], dtype=np.int64)


def _chunk(batch: Batch) -> tuple:
    """A ``chunks`` row: the batch's columns as blobs, its time span from its ids."""
    times = [id_time(pid) or 0.0 for pid in (batch.ids[0], batch.ids[-1])]
    probs = np.ascontiguousarray(batch.probabilities, dtype="<f4")
    return (
        batch.model,
        batch.version,
        min(times),
        max(times),
        len(batch.ids),
        "".join(batch.ids),
        probs.argmax(axis=1).astype(np.uint8).tobytes(),
        probs.tobytes(),
        b"" if batch.pixels is None else np.ascontiguousarray(batch.pixels, dtype=np.uint8).tobytes(),
        batch.role,
    )
