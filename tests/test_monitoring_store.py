"""The monitoring library without a service: the SQLite prediction log (feedback, retention, writers in
several processes at once), the drift reference and detector, the accuracy interval, the retraining policy,
and the recorder's ids and bounded queue."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import random
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from mindtrace.monitoring import Batch, MonitoringSettings, PredictionLog, Reference, Retention, detect
from mindtrace.monitoring.drift import DriftVerdict
from mindtrace.monitoring.report import LiveAccuracy, VersionReport, version_report, wilson
from mindtrace.monitoring.store import id_time, new_ids, split_ids
from mindtrace.monitoring.trigger import RetrainPolicy
from service.recorder import FLUSH_ROWS, Recorder

RNG = np.random.default_rng(3)


def _records(n: int, version: str = "1", at: float = 1000.0) -> Batch:
    """``n`` predictions made one a second from ``at``."""
    probs = RNG.dirichlet(np.ones(10), n).astype(np.float32)
    pixels = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    ids = [new_ids(1, now=at + i) for i in range(n)]
    return Batch(ids, "m", version, probs, pixels)


def test_rows_read_back_as_written(tmp_path):
    log = PredictionLog(tmp_path / "p.db")
    first, second = _records(30), _records(20, at=2000.0)
    log.write([first])
    log.write([second, _records(5, version="2", at=2100.0)])
    probs = log.recent("m", "1", 25)  # the newest 25, oldest first: 5 of the first flush, 20
    assert np.array_equal(probs, np.concatenate([first.probabilities[-5:], second.probabilities]))
    assert len(log.recent("m", "1", 1000)) == 50 and log.recent("m", "3", 10).shape == (0, 10)
    assert log.count("m", "1") == (50, 0) and log.versions("m") == ["1", "2"]
    assert log.count("m", "1") == (50, 0)


def test_feedback_is_all_or_nothing_and_a_second_label_replaces_the_first(tmp_path):
    log = PredictionLog(tmp_path / "p.db")
    batch = _records(10)
    log.write([batch])
    p1, p2 = batch.ids[1], batch.ids[2]
    unheard = new_ids(1, now=1001.0)  # the time of a logged prediction, not its id
    for strange in (unheard, "nope", "zz" * 12):
        result = log.add_feedback({p1: 3, strange: 4})
        assert result.unknown == [strange] and result.accepted == 0
    assert log.count("m", "1") == (10, 0)  # p1 was not labelled either
    assert log.add_feedback({p1: 3, p2: 5}).replaced == []
    again = log.add_feedback({p1: 4})
    assert again.accepted == 1 and again.replaced == [p1]
    predicted, truth = log.labelled("m", "1", 100)
    assert sorted(truth.tolist()) == [4, 5]
    assert sorted(predicted.tolist()) == sorted(batch.probabilities[1:3].argmax(1).tolist())
    pixels, labels = log.labelled_inputs()
    assert labels.tolist() == [5, 4]  # in the order the labels were given: p2, then p1's replacement
    assert np.array_equal(pixels, batch.pixels[[2, 1]])


def test_retention_by_age_then_by_count(tmp_path):
    log = PredictionLog(tmp_path / "p.db")
    flushes = [_records(10, at=1000.0 + 10 * k) for k in range(10)]  # ten flushes of ten, 1000-1099 s
    for batch in flushes:
        log.write([batch])
    log.add_feedback({flushes[0].ids[0]: 1, flushes[9].ids[0]: 2})
    assert log.apply_retention(Retention(max_age_seconds=50, max_rows=0), now=1100.0) == 50  # before 1050
    assert log.count("m", "1") == (50, 1)  # the first flush's label went with it
    assert log.apply_retention(Retention(max_age_seconds=0, max_rows=20), now=1100.0) == 30
    probs = log.recent("m", "1", 1000)
    assert np.array_equal(probs, np.concatenate([flushes[8].probabilities, flushes[9].probabilities]))


def _writer(path: str, prefix: str) -> None:
    log = PredictionLog(path)
    for _ in range(20):
        log.write([_records(200)])


def test_writers_in_several_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "p.db")
    PredictionLog(path)
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(path, f"w{k}")) for k in range(3)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0, 0]
    assert PredictionLog(path).count("m", "1")[0] == 3 * 20 * 200
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def _opener(folder: str, rounds: int, start: multiprocessing.synchronize.Barrier, seed: int) -> None:
    jitter = random.Random(seed)
    for k in range(rounds):
        start.wait(timeout=10)  # every process opens the same new file at about the same moment
        time.sleep(jitter.random() * 0.003)
        PredictionLog(Path(folder) / f"{k}.db")


def test_workers_starting_together_all_open_a_new_log(tmp_path):
    """A server's workers start together and each opens the prediction log, the first creating it. SQLite
    refuses one of two connections switching a new file to WAL at once; before the switch was retried, this
    failed in about one round out of fifty (and a worker died at startup, once in a few CI runs)."""
    processes, rounds = 2, 150
    context = multiprocessing.get_context("fork")
    start = context.Barrier(processes)
    folder = str(tmp_path)
    openers = [context.Process(target=_opener, args=(folder, rounds, start, k)) for k in range(processes)]
    for p in openers:
        p.start()
    for p in openers:
        p.join(timeout=120)
    assert [p.exitcode for p in openers] == [0] * processes
    for k in range(0, rounds, 10):
        with sqlite3.connect(tmp_path / f"{k}.db") as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert db.execute("PRAGMA page_size").fetchone() == (16384,)
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert {"chunks", "feedback", "rollout_stats", "retrain_triggers"} <= tables


def test_the_retraining_claim_is_taken_once(tmp_path):
    log = PredictionLog(tmp_path / "p.db")
    assert log.claim_trigger("m", "1", "drift")
    assert not log.claim_trigger("m", "1", "drift again")
    log.release_trigger("m", "1")
    assert log.claim_trigger("m", "1", "drift")


def test_a_reference_round_trips_and_refuses_what_is_not_one():
    reference = Reference(RNG.dirichlet(np.ones(10), 500).astype(np.float32), "a test set")
    back = Reference.from_bytes(reference.to_bytes())
    assert np.array_equal(back.probabilities, reference.probabilities) and back.description == "a test set"
    assert back.histogram.sum() == 500
    for bad in (b"", b"not a zip", Reference(np.ones((3, 4), np.float32), "x").to_bytes()):
        with pytest.raises(ValueError, match="not a drift reference"):
            Reference.from_bytes(bad)


def test_the_detector_holds_its_level_and_sees_a_label_shift():
    reference = Reference(RNG.dirichlet(np.ones(10), 10_000).astype(np.float32), "r")
    same = [detect(reference, RNG.dirichlet(np.ones(10), 500)).detected for _ in range(60)]
    assert sum(same) <= 6  # alpha 0.05: about 3 expected; Bonferroni makes it fewer
    # Label shift only: the same kind of outputs, but digit 0 never predicted.
    shifted = reference.probabilities[reference.probabilities.argmax(1) != 0][:500]
    verdict = detect(reference, shifted)
    assert verdict.detected and verdict.chi2_p_value < 1e-6
    small = detect(reference, shifted[:20], min_window=100)
    assert not small.detected and small.p_value is None and "at least 100" in small.note


def test_live_accuracy_and_its_interval():
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    low, high = wilson(90, 100)
    assert low < 0.9 < high and high - low < 0.13
    log_dir = Path(__import__("tempfile").mkdtemp())
    log = PredictionLog(log_dir / "p.db")
    records = _records(200)
    log.write([records])
    predicted = records.probabilities.argmax(1)
    truth = {pid: int(p) if i % 4 else int(p + 1) % 10
             for i, (pid, p) in enumerate(zip(records.ids, predicted, strict=True))}  # fmt: skip
    log.add_feedback(truth)
    reference = Reference(RNG.dirichlet(np.ones(10), 2000).astype(np.float32), "r")
    report = version_report(log, "m", "1", reference, MonitoringSettings(window=200, accuracy_window=100))
    assert (
        report.live_accuracy.value == pytest.approx(0.75, abs=0.05) and report.live_accuracy.labelled == 100
    )
    assert report.requests == 200 and report.feedback == 200 and sum(report.label_histogram) == 200


def _version(detected: bool, accuracy: float | None, labelled: int) -> VersionReport:
    drift = DriftVerdict(detected=detected, p_value=1e-9 if detected else 0.5, window=1000, reference="r",
                         alpha=0.05)  # fmt: skip
    live = LiveAccuracy(value=accuracy, low=None, high=None, labelled=labelled, window=1000)
    return VersionReport(model="m", version="3", served=True, requests=1000, feedback=labelled,
                         live_accuracy=live, label_histogram=[0] * 10, reference_histogram=None,
                         drift=drift)  # fmt: skip


def test_the_retraining_policy(tmp_path):
    assert RetrainPolicy().reason(_version(True, 0.1, 1000)) is None  # off
    drift = RetrainPolicy(on="drift")
    assert "drift detected on version 3" in drift.reason(_version(True, None, 0))
    assert drift.reason(_version(False, 0.1, 1000)) is None
    accuracy = RetrainPolicy(on="accuracy", below_accuracy=0.9, min_labels=100)
    assert accuracy.reason(_version(False, 0.8, 99)) is None  # too few labels to judge
    assert "live accuracy 0.800 below 0.9" in accuracy.reason(_version(False, 0.8, 100))
    assert RetrainPolicy(on="any").reason(_version(True, 0.95, 100)) is not None
    config = tmp_path / "small.json"
    config.write_text('{"epochs": 1, "num_train": 3000}')
    request = RetrainPolicy(on="drift", config_file=config).request()
    assert request.epochs == 1 and request.with_feedback


def test_the_recorder_bounds_its_queue_and_writes_in_one_flush(tmp_path):
    ids = split_ids(new_ids(1000, now=1234.5))
    assert len(set(ids)) == 1000 and {id_time(i) for i in ids} == {1234.5}
    log = PredictionLog(tmp_path / "p.db")
    recorder = Recorder(log, sample=1.0, flush_seconds=60, max_pending=100)
    probs = RNG.dirichlet(np.ones(10), 64).astype(np.float32)
    pixels = np.zeros((64, 28, 28), np.uint8)
    first, _ = recorder.record(pixels, probs, "m", "1")
    second, _ = recorder.record(pixels, probs, "m", "1")  # 128 > 100: not logged, still answered with ids
    assert len(first) == len(second) == 64
    assert recorder.flush() == 64 and log.count("m", "1")[0] == 64
    assert recorder.record(pixels, probs, "m", "1")[1] and recorder.flush() == 64  # room again
    unsampled = Recorder(log, sample=0.0, flush_seconds=60, max_pending=100)
    ids, sampled = unsampled.record(pixels, probs, "m", "2")
    assert len(ids) == 64 and not sampled and unsampled.flush() == 0


def test_the_writer_wakes_for_a_full_transaction_and_writes_bounded_ones(tmp_path):
    """Writes hold about FLUSH_ROWS predictions each, whole requests, and start as soon as that many wait,
    long before the timer (DESIGN.md, "The prediction log's memory")."""
    log = PredictionLog(tmp_path / "p.db")
    writes: list[int] = []
    write = log.write
    log.write = lambda batches: (writes.append(sum(len(b.ids) for b in batches)), write(batches))[1]
    recorder = Recorder(log, sample=1.0, flush_seconds=60, max_pending=100_000)
    recorder.start()
    try:
        probs = RNG.dirichlet(np.ones(10), 1024).astype(np.float32)
        pixels = np.zeros((1024, 28, 28), np.uint8)
        for _ in range(10):  # 10,240 predictions: two transactions' worth, and a rest
            recorder.record(pixels, probs, "m", "1")
        wait_until = time.monotonic() + 10
        while sum(writes) < 2 * FLUSH_ROWS and time.monotonic() < wait_until:
            time.sleep(0.05)
        assert sum(writes) >= 2 * FLUSH_ROWS  # written without waiting the 60 s of the timer
    finally:
        recorder.stop()
    assert sum(writes) == 10_240 and log.count("m", "1")[0] == 10_240
    assert max(writes) <= FLUSH_ROWS + 1024  # whole requests, up to about FLUSH_ROWS
