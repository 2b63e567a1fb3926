"""``python -m benchmarks predlog``: which embedded format should the prediction log use, SQLite or Parquet?

Several service workers log at once, so each format is written by ``writers`` processes at the same time,
each flushing batches as a worker's recorder does (``service/recorder.py``): a batch of queued single-image
predictions becomes rows (16-hex id, Unix time, model, version, label, the ten probabilities as 40 bytes of
float32, the 784 pixels) written in one go. The rows are pre-generated before the clock starts; what is
timed is the flush: turning the queue into rows and writing them. Pixels are real MNIST test digits, so
compressed sizes are realistic; probabilities are random and peaked. Nine rows in ten belong to version 1,
one in ten to version 2 (a canary).

The formats:

- ``sqlite``: :class:`mindtrace.monitoring.store.PredictionLog` itself (one WAL-mode file, one
  transaction per flush; writers wait for each other's write lock).
- ``parquet`` / ``parquet-zstd``: :class:`ParquetLog` below. Parquet files cannot be appended to, so each
  flush writes a new file (renamed into place, so that readers never see half a file) named by its newest
  row's time; a feedback call writes one more small file of (id, truth, truth_at), joined with the
  predictions when labelled rows are read. Checking that every id of a feedback call was logged (as the
  SQLite store does: all or nothing) means scanning the id column of every prediction file. A long-lived
  log would also need compaction of the small files; not measured here.

Then, with the writers done: the newest ``read`` rows of each version (their probabilities), and
``feedback`` labels applied by prediction id, each timed ``repeats`` times (the median counts).

>>> import tempfile
>>> log = ParquetLog(Path(tempfile.mkdtemp()))
>>> probs = np.eye(10, dtype=np.float32)[[3, 5]]
>>> log.write(["a1", "b2"], np.array([1.0, 2.0]), "m", ["1", "1"], probs, np.zeros((2, 28, 28), np.uint8))
>>> log.recent("m", "1", 1).argmax(axis=1)
array([5])
>>> log.add_feedback({"a1": 3}), log.add_feedback({"zz": 1})
(1, 0)
>>> log.labelled("m", "1", 10)
(array([3]), array([3]))
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

PREDLOG_FORMATS = ("sqlite", "parquet", "parquet-zstd")
MODEL = "mnist-mlp"
VERSIONS = ("1", "2")
VERSION_SHARES = (0.9, 0.1)  # the served version and a canary
WRITER_TIMEOUT_SECONDS = 120  # a writer that has not reported by then is stopped and the run fails


@dataclass(frozen=True)
class PredlogOptions:
    """What a run measures.

    >>> PredlogOptions().rows
    200000
    """

    rows: int = 200_000
    writers: int = 2
    batch: int = 1000
    read: int = 1000
    feedback: int = 1000
    repeats: int = 5
    formats: tuple[str, ...] = PREDLOG_FORMATS


# --- Parquet ------------------------------------------------------------------------------------------------


class ParquetLog:
    """A prediction log as a folder of Parquet files: ``predictions/`` (one file per flush) and ``feedback/``
    (one file per feedback call). Same reads as the SQLite store; see the module docstring."""

    def __init__(self, folder: Path, compression: str = "snappy"):
        self.folder = Path(folder)
        self.compression = compression
        self.predictions = self.folder / "predictions"
        self.feedback = self.folder / "feedback"
        for sub in (self.predictions, self.feedback):
            sub.mkdir(parents=True, exist_ok=True)

    def _put(self, folder: Path, name: str, table: Any) -> None:
        import pyarrow.parquet as pq

        # Written aside, then renamed: a reader lists only whole files, and a killed writer leaves no half.
        tmp = folder / f".{name}.tmp"
        pq.write_table(table, tmp, compression=self.compression)
        os.replace(tmp, folder / name)

    def write(
        self,
        ids: Sequence[str],
        at: np.ndarray,
        model: str,
        versions: Sequence[str],
        probabilities: np.ndarray,
        pixels: np.ndarray,
    ) -> None:
        """One flush: the rows as a new file named by its newest time (then the writer's pid: unique)."""
        import pyarrow as pa

        n = len(ids)
        probs = np.ascontiguousarray(probabilities, dtype="<f4")
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        table = pa.table(
            {
                "id": pa.array(ids, pa.string()),
                "at": pa.array(at, pa.float64()),
                "model": pa.array([model] * n, pa.string()),
                "version": pa.array(versions, pa.string()),
                "label": pa.array(probs.argmax(axis=1).astype(np.int8)),
                # Fixed-size binary from one buffer: no per-row Python object.
                "probabilities": pa.FixedSizeBinaryArray.from_buffers(
                    pa.binary(40), n, [None, pa.py_buffer(probs.tobytes())]
                ),
                "pixels": pa.FixedSizeBinaryArray.from_buffers(
                    pa.binary(784), n, [None, pa.py_buffer(pixels.tobytes())]
                ),
            }
        )
        name = f"{round(float(np.max(at)) * 1e6):020d}-{os.getpid()}-{time.monotonic_ns()}.parquet"
        self._put(self.predictions, name, table)

    def _files(self, folder: Path) -> list[Path]:
        return sorted((p for p in folder.iterdir() if p.suffix == ".parquet"), reverse=True)

    def recent(self, model: str, version: str, limit: int) -> np.ndarray:
        """The probabilities [n, 10] of the newest ``limit`` rows of ``version``.

        Files are read newest first and the scan stops once the next file's newest row is older than the
        ``limit``-th newest row found: two writers' files overlap in time, so one file more is not enough.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts, found = [], np.empty(0)
        for path in self._files(self.predictions):
            newest_in_file = int(path.name.split("-")[0]) / 1e6
            if len(found) >= limit and newest_in_file < np.sort(found)[-limit]:
                break
            part = pq.read_table(
                path,
                columns=["at", "probabilities"],
                filters=[("model", "=", model), ("version", "=", version)],
            )
            parts.append(part)
            found = np.concatenate([found, part.column("at").to_numpy()])
        if not parts:
            return np.empty((0, 10), np.float32)
        table = pa.concat_tables(parts).sort_by([("at", "descending")]).slice(0, limit)
        return np.frombuffer(_binary_buffer(table.column("probabilities")), "<f4").reshape(-1, 10)

    def add_feedback(self, labels: Mapping[str, int], at: float | None = None, check: bool = True) -> int:
        """Store true ``labels`` by id, all or nothing: 0 (nothing stored) when an id was never logged.

        ``check=False`` skips that check (unknown ids would then only be dropped by the join at read time).
        """
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        wanted = pa.array(list(labels), pa.string())
        if check:
            seen = 0
            for path in self._files(self.predictions):
                ids = pq.read_table(path, columns=["id"]).column("id")
                seen += pc.sum(pc.is_in(ids, value_set=wanted)).as_py() or 0
            if seen < len(labels):  # ids are unique, so fewer matches means an unknown id
                return 0
        at = time.time() if at is None else at
        table = pa.table(
            {
                "id": wanted,
                "truth": pa.array(list(labels.values()), pa.int8()),
                "truth_at": pa.array([at] * len(labels), pa.float64()),
            }
        )
        self._put(self.feedback, f"{round(at * 1e6):020d}-{os.getpid()}-{time.monotonic_ns()}.parquet", table)
        return len(labels)

    def labelled(self, model: str, version: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """The newest ``limit`` labelled rows of ``version`` (by feedback time): predicted and true labels.

        The feedback files are joined with the predictions' ids at read time; a later label for an id wins.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = self._files(self.feedback)
        if not files:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        feedback = pa.concat_tables([pq.read_table(p) for p in files]).sort_by([("truth_at", "descending")])
        # Newest label per id: the first occurrence after the sort.
        _, first = np.unique(feedback.column("id").to_numpy(zero_copy_only=False), return_index=True)
        feedback = feedback.take(pa.array(np.sort(first)))
        predictions = pa.concat_tables(
            [
                pq.read_table(
                    p, columns=["id", "label"], filters=[("model", "=", model), ("version", "=", version)]
                )
                for p in self._files(self.predictions)
            ]
        )
        joined = (
            predictions.join(feedback, "id", join_type="inner")
            .sort_by([("truth_at", "descending")])
            .slice(0, limit)
        )
        return (
            joined.column("label").to_numpy().astype(np.int64),
            joined.column("truth").to_numpy().astype(np.int64),
        )


def _binary_buffer(column: Any) -> bytes:
    """The bytes of a fixed-size binary column, chunks joined (no per-row Python object)."""
    parts = []
    for chunk in column.chunks:
        width = chunk.type.byte_width
        parts.append(
            chunk.buffers()[1].to_pybytes()[chunk.offset * width : (chunk.offset + len(chunk)) * width]
        )
    return b"".join(parts)


# --- the adapters: one interface over both ------------------------------------------------------------------


@dataclass
class _Batch:
    """One flush's worth of queued predictions, as the recorder holds them (arrays and strings)."""

    ids: list[str]
    versions: list[str]
    probabilities: np.ndarray
    pixels: np.ndarray


def _opener(fmt: str, folder: Path) -> tuple[Any, Callable[[_Batch], None]]:
    """The log of format ``fmt`` in ``folder``, and a flush function writing one batch into it."""
    if fmt == "sqlite":
        from mindtrace.monitoring.store import Batch, PredictionLog

        log = PredictionLog(folder / "predictions.db")

        def flush(b: _Batch) -> None:
            # As Recorder.flush: one Batch per version, all in one transaction.
            versions = np.asarray(b.versions)
            ids = np.asarray(b.ids)
            batches = []
            for version in dict.fromkeys(b.versions):
                mine = versions == version
                batches.append(
                    Batch(ids[mine].tolist(), MODEL, version, b.probabilities[mine], b.pixels[mine])
                )
            log.write(batches)

        return log, flush
    log = ParquetLog(folder, "zstd" if fmt == "parquet-zstd" else "snappy")

    def flush_parquet(b: _Batch) -> None:
        at = time.time() + np.arange(len(b.ids)) * 1e-6
        log.write(b.ids, at, MODEL, b.versions, b.probabilities, b.pixels)

    return log, flush_parquet


def _new_ids(n: int) -> list[str]:
    from mindtrace.monitoring.store import new_ids, split_ids

    return split_ids(new_ids(n))  # the service's ids: time first, then random


def _writer(
    fmt: str, folder: str, index: int, rows: int, batch: int, digits: np.ndarray, barrier: Any, results: Any
) -> None:
    """One writer process: prepare its batches, wait for the others, flush them all as fast as it can."""
    rng = np.random.default_rng(index)
    _, flush = _opener(fmt, Path(folder))
    batches = []
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        batches.append(
            _Batch(
                ids=_new_ids(n),
                versions=list(rng.choice(VERSIONS, n, p=VERSION_SHARES)),
                probabilities=rng.dirichlet(np.full(10, 0.1), n).astype(np.float32),
                pixels=digits[rng.integers(0, len(digits), n)],
            )
        )
    # One row into a throwaway log first: the first flush of a process pays for imports and pyarrow's
    # lazy set-up (0.4-0.6 s measured), which a long-running worker pays once.
    with tempfile.TemporaryDirectory(prefix="warm-up-") as scratch:
        first = batches[0]
        _opener(fmt, Path(scratch))[1](
            _Batch(first.ids[:1], first.versions[:1], first.probabilities[:1], first.pixels[:1])
        )
    barrier.wait()
    began = time.monotonic()
    flushes = []
    for b in batches:
        t0 = time.monotonic()
        flush(b)
        flushes.append(time.monotonic() - t0)
    ended = time.monotonic()
    results.put(
        {
            "index": index,
            "began": began,
            "ended": ended,
            "flushes": flushes,
            "ids": [i for b in batches for i in b.ids],
        }
    )


# --- the measurement ---------------------------------------------------------------------------------------


def _median_seconds(call: Callable[[int], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``call(i)`` for i in range(repeats), and the last result."""
    times, result = [], None
    for i in range(repeats):
        t0 = time.perf_counter()
        result = call(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure_format(fmt: str, folder: Path, options: PredlogOptions, digits: np.ndarray) -> dict[str, Any]:
    """Write ``options.rows`` rows into a fresh log of ``fmt`` in ``folder`` from concurrent writer processes,
    then time reads and feedback. The figures of one format."""
    folder.mkdir(parents=True)
    _opener(fmt, folder)  # created once here: the writers must not race to make the schema
    context = multiprocessing.get_context("spawn")  # no inherited threads or open files
    barrier = context.Barrier(options.writers + 1)
    results = context.Queue()
    share = [
        options.rows // options.writers + (i < options.rows % options.writers) for i in range(options.writers)
    ]
    processes = [
        context.Process(
            target=_writer,
            args=(fmt, str(folder), i, share[i], options.batch, digits, barrier, results),
            daemon=True,
        )
        for i in range(options.writers)
    ]
    for p in processes:
        p.start()
    try:
        barrier.wait(timeout=WRITER_TIMEOUT_SECONDS)
        reports = [results.get(timeout=WRITER_TIMEOUT_SECONDS) for _ in processes]
    finally:
        for p in processes:
            p.join(timeout=5)
            if p.is_alive():  # only the writers started here
                p.terminate()
                p.join()
    if any(p.exitcode for p in processes):
        raise RuntimeError(f"a {fmt} writer failed: exit codes {[p.exitcode for p in processes]}")
    elapsed = max(r["ended"] for r in reports) - min(r["began"] for r in reports)
    flushes = sorted(s for r in reports for s in r["flushes"])
    size = _folder_bytes(folder)
    files = sum(1 for p in folder.rglob("*") if p.is_file())

    log, _ = _opener(fmt, folder)
    reads = {}
    for version in VERSIONS:
        seconds, probs = _median_seconds(
            lambda _, version=version: log.recent(MODEL, version, options.read), options.repeats
        )
        if len(probs) != options.read:
            raise RuntimeError(f"{fmt}: read {len(probs)} rows of version {version}, not {options.read}")
        reads[version] = seconds

    ids = [i for r in reports for i in r["ids"]]
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(ids), options.feedback * options.repeats, replace=False).reshape(
        options.repeats, -1
    )

    def feedback(i: int, check: bool = True) -> int:
        labels = {ids[j]: int(rng.integers(0, 10)) for j in chosen[i]}
        if isinstance(log, ParquetLog):
            return log.add_feedback(labels, check=check)
        return log.add_feedback(labels).accepted

    feedback_seconds, accepted = _median_seconds(feedback, options.repeats)
    if accepted != options.feedback:
        raise RuntimeError(f"{fmt}: {accepted} feedback labels stored, not {options.feedback}")
    unchecked_ms = None
    if isinstance(log, ParquetLog):  # the same labels again, appended without looking the ids up
        unchecked_ms = 1000 * _median_seconds(lambda i: feedback(i, check=False), options.repeats)[0]
    labelled_seconds, (predicted, _) = _median_seconds(
        lambda _: log.labelled(MODEL, "1", 1000), options.repeats
    )
    return {
        "format": fmt,
        "rows": options.rows,
        "writers": options.writers,
        "seconds": elapsed,
        "rows_per_second": options.rows / elapsed,
        "flush_p50_ms": 1000 * flushes[len(flushes) // 2],
        "flush_max_ms": 1000 * flushes[-1],
        "bytes": size,
        "bytes_per_row": size / options.rows,
        "files": files,
        "read_ms": {version: 1000 * s for version, s in reads.items()},
        "feedback_ms": 1000 * feedback_seconds,
        "feedback_unchecked_ms": unchecked_ms,
        "labelled_read_ms": 1000 * labelled_seconds,
        "labelled_rows": len(predicted),
    }


def run_predlog_benchmark(
    options: PredlogOptions, work: Path | None = None, command: str = ""
) -> dict[str, Any]:
    """Measure every format of ``options`` in a fresh folder under ``work`` (default: a temporary one).

    >>> results = run_predlog_benchmark(PredlogOptions(rows=20_000))   # doctest: +SKIP
    >>> [f["format"] for f in results["formats"]]                       # doctest: +SKIP
    ['sqlite', 'parquet', 'parquet-zstd']
    """
    from importlib.metadata import version

    from mindtrace.data.digits import mnist_test_pixels
    from mindtrace.utils import available_cores

    if min(options.rows, options.writers, options.batch, options.read, options.feedback, options.repeats) < 1:
        raise ValueError("--rows, --writers, --batch, --read, --feedback and --repeats must be at least 1")
    if options.feedback * options.repeats > options.rows:
        raise ValueError("--feedback x --repeats labels need at least as many rows")
    digits, _ = mnist_test_pixels(10_000)
    measured = []
    with tempfile.TemporaryDirectory(prefix="mindtrace-predlog-", dir=work) as tmp:
        for fmt in options.formats:
            measured.append(measure_format(fmt, Path(tmp) / fmt, options, digits))
            shutil.rmtree(Path(tmp) / fmt)  # one format's files at a time on disk
    return {
        "benchmark": "predlog",
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "options": asdict(options),
        "versions": dict(zip(VERSIONS, VERSION_SHARES, strict=True)),
        "machine": {
            "cores": available_cores(),
            "os": platform.platform(),
            "python": platform.python_version(),
            "packages": {p: version(p) for p in ("numpy", "pyarrow")},
            "sqlite": __import__("sqlite3").sqlite_version,
        },
        "formats": measured,
    }


def results_table(results: dict[str, Any]) -> Table:
    """One row per format: write rate, flush times, size, read and feedback times."""
    o = results["options"]
    table = Table(
        title=(
            f"prediction log: {o['rows']:,} rows from {o['writers']} writer processes at once, "
            f"{o['batch']:,} rows a flush; reads and feedback: median of {o['repeats']}"
        ),
        caption=(
            "sqlite: mindtrace.monitoring.store.PredictionLog (WAL, a transaction a flush). parquet: a file "
            "a flush; feedback appended as a file of (id, truth, truth_at) and joined at read time; its ids "
            "checked by scanning every file's id column (in brackets: appended unchecked)."
        ),
    )
    columns = ["format", "rows/s written", "flush p50 / max ms", "bytes/row", "files"]
    columns += [f"newest {o['read']:,} of v{v} ({share:.0%}) ms" for v, share in results["versions"].items()]
    columns += [f"{o['feedback']:,} feedback labels ms (ids unchecked)", "newest 1,000 labelled ms"]
    for column in columns:
        table.add_column(column, justify="left" if column == "format" else "right")
    for f in results["formats"]:
        table.add_row(
            f["format"],
            f"{f['rows_per_second']:,.0f}",
            f"{f['flush_p50_ms']:.1f} / {f['flush_max_ms']:.0f}",
            f"{f['bytes_per_row']:,.0f}",
            f"{f['files']:,}",
            *(f"{ms:.1f}" for ms in f["read_ms"].values()),
            f"{f['feedback_ms']:.1f}"
            + ("" if f["feedback_unchecked_ms"] is None else f" ({f['feedback_unchecked_ms']:.1f})"),
            f"{f['labelled_read_ms']:.1f}",
        )
    return table


def write_results(results: dict[str, Any], out: Path) -> Path:
    """``out/predlog.json``; the folder is created."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "predlog.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path
