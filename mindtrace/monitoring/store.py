"""The prediction log: every logged prediction, its input as the model saw it, and its feedback label.

The embedded store is one SQLite file under ``MINDTRACE_HOME/monitoring``, in WAL mode, so that every
worker of every server sharing the home writes to it at once (each in its own batched transactions) while
readers go on reading. DESIGN.md ("Monitoring") has the measurements that chose SQLite over Parquet. The
scale-out store (PostgreSQL) will implement the same methods.

A row: ``id`` (the ``prediction_id`` the client received), ``at`` (Unix time), the registered model and
version that answered, the predicted label, the ten probabilities (float32 bytes), the 28x28 uint8 pixels
the model took (784 bytes), and the true label once feedback gives it.

>>> import tempfile, numpy as np
>>> store = PredictionLog(Path(tempfile.mkdtemp()) / "predictions.db")
>>> probs = np.eye(10, dtype=np.float32)[[3]]
>>> store.write([Record("a1", 0.0, "mnist-mlp", "1", probs[0], np.zeros((28, 28), np.uint8))])
>>> store.add_feedback({"a1": 3}).accepted
1
>>> store.labelled("mnist-mlp", "1", 100)
(array([3]), array([3]))
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mindtrace.config import Config

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT NOT NULL UNIQUE,
    at REAL NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    label INTEGER NOT NULL,
    probabilities BLOB NOT NULL,
    pixels BLOB NOT NULL,
    truth INTEGER,
    truth_at REAL
);
CREATE INDEX IF NOT EXISTS predictions_by_version ON predictions (model, version, at);
CREATE INDEX IF NOT EXISTS predictions_by_time ON predictions (at);
CREATE INDEX IF NOT EXISTS labelled_by_version ON predictions (model, version, truth_at)
    WHERE truth IS NOT NULL;
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
# SQLite's limit on parameters in one statement is 32,766 (since 3.32); stay well below it.
_IN_CHUNK = 900


def log_path(config: Config) -> Path:
    """Where the embedded prediction log lives: ``[DIR_PATHS] MONITORING/predictions.db``.

    >>> from mindtrace.config import Config
    >>> str(log_path(Config(env={"MINDTRACE_HOME": "/srv/mt"})))
    '/srv/mt/monitoring/predictions.db'
    """
    return config["DIR_PATHS"].getpath("MONITORING") / "predictions.db"


def feedback_digits(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Every logged input with a feedback label, as training digits: pixels [n, 28, 28] and labels [n]."""
    path = log_path(config)
    if not path.exists():
        return np.empty((0, 28, 28), np.uint8), np.empty(0, np.int64)
    return PredictionLog(path).labelled_inputs()


@dataclass(frozen=True)
class Record:
    """One prediction to log. ``probabilities`` float32 [10]; ``pixels`` uint8 [28, 28]."""

    id: str
    at: float
    model: str
    version: str
    probabilities: np.ndarray
    pixels: np.ndarray

    def row(self) -> tuple:
        return (
            self.id,
            self.at,
            self.model,
            self.version,
            int(self.probabilities.argmax()),
            np.asarray(self.probabilities, dtype="<f4").tobytes(),
            np.asarray(self.pixels, dtype=np.uint8).tobytes(),
        )


@dataclass
class FeedbackResult:
    """What one feedback call did: labels stored, ids whose earlier label was replaced, ids not logged."""

    accepted: int = 0
    replaced: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Retention:
    """How long rows are kept: at most ``max_age_seconds`` old and the newest ``max_rows`` (0: no bound)."""

    max_age_seconds: float
    max_rows: int


class PredictionLog:
    """The SQLite prediction log at ``path`` (created with its folder on first use); safe to share between
    threads (the service's writer thread and its request threads) and processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: set once for the file
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, its block one transaction: committed when it ends, rolled back on error.

        One connection per thread, kept open: SQLite connections belong to one thread, and closing the
        last one makes SQLite copy the whole write-ahead log back into the file (a third of a flush's time).
        """
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000)
            # NORMAL in WAL mode: a committed batch survives a killed process; only power loss can drop the
            # last transactions, never corrupt the file.
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        with db:
            yield db

    # --- writes ---------------------------------------------------------------------------------------------

    def write(self, records: Sequence[Record]) -> None:
        """Add ``records`` in one transaction: all of them or, if the process dies, none."""
        if records:
            with self._connect() as db:
                db.executemany(
                    "INSERT OR IGNORE INTO predictions (id, at, model, version, label, probabilities, pixels)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [record.row() for record in records],
                )

    def add_feedback(self, labels: Mapping[str, int], at: float | None = None) -> FeedbackResult:
        """Store true ``labels`` by prediction id; all or nothing when an id is unknown (nothing is stored).

        A second label for an id replaces the first; the result names such ids.
        """
        at = time.time() if at is None else at
        result = FeedbackResult()
        with self._connect() as db:
            known = dict(self._select(db, "SELECT id, truth FROM predictions WHERE id IN ({})", list(labels)))
            result.unknown = [pid for pid in labels if pid not in known]
            if result.unknown:
                return result
            result.replaced = [pid for pid in labels if known[pid] is not None]
            db.executemany(
                "UPDATE predictions SET truth = ?, truth_at = ? WHERE id = ?",
                [(label, at, pid) for pid, label in labels.items()],
            )
            result.accepted = len(labels)
        return result

    def apply_retention(self, retention: Retention, now: float | None = None) -> int:
        """Delete rows older than the age bound, then all but the newest ``max_rows``; how many went."""
        now = time.time() if now is None else now
        with self._connect() as db:
            deleted = 0
            if retention.max_age_seconds > 0:
                cutoff = now - retention.max_age_seconds
                deleted += db.execute("DELETE FROM predictions WHERE at < ?", (cutoff,)).rowcount
            if retention.max_rows > 0:
                edge = db.execute(
                    "SELECT at FROM predictions ORDER BY at DESC LIMIT 1 OFFSET ?", (retention.max_rows,)
                ).fetchone()
                if edge is not None:
                    deleted += db.execute("DELETE FROM predictions WHERE at <= ?", edge).rowcount
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
            row = db.execute(
                "SELECT count(*), count(truth) FROM predictions WHERE model = ? AND version = ?",
                (model, version),
            ).fetchone()
        return int(row[0]), int(row[1])

    def versions(self, model: str) -> list[str]:
        """The versions of ``model`` with logged predictions, newest prediction last."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT version FROM predictions WHERE model = ? GROUP BY version ORDER BY max(at)", (model,)
            ).fetchall()
        return [row[0] for row in rows]

    def recent(self, model: str, version: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """The newest ``limit`` predictions of ``version``: probabilities [n, 10] and pixels [n, 28, 28]."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT probabilities, pixels FROM predictions WHERE model = ? AND version = ?"
                " ORDER BY at DESC LIMIT ?",
                (model, version, limit),
            ).fetchall()
        probs = np.frombuffer(b"".join(r[0] for r in rows), dtype="<f4").reshape(-1, 10)
        pixels = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.uint8).reshape(-1, 28, 28)
        return probs, pixels

    def labelled(self, model: str, version: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """The newest ``limit`` labelled predictions of ``version``: predicted and true labels."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT label, truth FROM predictions WHERE model = ? AND version = ? AND truth IS NOT NULL"
                " ORDER BY truth_at DESC LIMIT ?",
                (model, version, limit),
            ).fetchall()
        array = np.array(rows, dtype=np.int64).reshape(-1, 2)
        return array[:, 0], array[:, 1]

    def labelled_inputs(self, since: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Every logged input with a feedback label given after ``since``: pixels [n, 28, 28], true labels."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT pixels, truth FROM predictions WHERE truth IS NOT NULL AND truth_at > ?"
                " ORDER BY truth_at",
                (since,),
            ).fetchall()
        pixels = np.frombuffer(b"".join(r[0] for r in rows), dtype=np.uint8).reshape(-1, 28, 28)
        return pixels, np.array([r[1] for r in rows], dtype=np.int64)

    @staticmethod
    def _select(db: sqlite3.Connection, sql: str, ids: list[str]) -> Iterable[tuple]:
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            yield from db.execute(sql.format(", ".join("?" * len(chunk))), chunk)
