"""Monitoring against a real ``bentoml serve`` (two workers): prediction ids, feedback and live accuracy,
drift on real shifted digits, /metrics agreeing with /monitoring, the log's retention, and a worker killed
while it writes.

The service serves version 1 of a small model (a few thousand training digits, so its live accuracy is
well below 1 and worth measuring), flushes its log every 0.2 s and keeps at most 40,000 predictions (more
than the other tests send, so that only the retention test meets the bound).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from mindtrace.monitoring.store import split_ids
from mindtrace.utils import ascii_to_pil, pil_to_ascii
from tests.helpers import BIN, random_test_digits, served, service_env, train, wait_for

pytestmark = pytest.mark.slow

MAX_ROWS = 40_000
FLUSH_SECONDS = 0.2


@dataclass
class Service:
    url: str
    home: Path
    texts: list[str]  # 1,000 real test digits drawn at random, base64 PNG
    labels: np.ndarray  # their true labels

    def batch(self, texts: list[str]) -> list[dict]:
        answer = requests.post(self.url + "/inference/batch", json={"images": texts}, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()["predictions"]

    def feedback(self, body: dict) -> requests.Response:
        return requests.post(self.url + "/feedback", json=body, timeout=30)

    def monitoring(self, **params) -> dict:
        answer = requests.get(self.url + "/monitoring", params=params, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def database(self) -> sqlite3.Connection:
        return sqlite3.connect(self.home / "monitoring" / "predictions.db", timeout=10)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, real_mnist_dir: Path) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("monitoring")
    env = service_env(
        root / "home", real_mnist_dir.parent, root / "bentoml",
        MINDTRACE__SERVICE__WORKERS="2",
        MINDTRACE__MONITORING__FLUSH_SECONDS=str(FLUSH_SECONDS),
        MINDTRACE__MONITORING__MAX_ROWS=str(MAX_ROWS),
        MINDTRACE__MONITORING__REFRESH_SECONDS="1",
    )  # fmt: skip
    train(env, root, "--policy", "always")
    texts, labels = random_test_digits(real_mnist_dir, 1000, seed=7)
    with served(env, root / "serve.log") as (url, _):
        yield Service(url, root / "home", texts, labels)


def _version(report: dict, version: str = "1") -> dict:
    return next(v for v in report["versions"] if v["version"] == version)


def _metric(text: str, name: str, version: str = "1") -> float:
    match = re.search(rf'^{name}\{{[^}}]*version="{version}"[^}}]*\}} (\S+)$', text, re.M)
    assert match, f"{name} for version {version} is not on /metrics"
    return float(match.group(1))


def test_every_answer_carries_a_prediction_id(service):
    one = requests.post(service.url + "/inference", json={"image": service.texts[0]}, timeout=30).json()
    assert re.fullmatch(r"[0-9a-f]{24}", one["prediction_id"])
    many = service.batch(service.texts[:50])
    ids = [p["prediction_id"] for p in many] + [one["prediction_id"]]
    assert len(set(ids)) == 51


def test_feedback_joins_predictions_and_live_accuracy_is_the_fraction_of_right_answers(service):
    texts, truth = service.texts[:300], service.labels[:300]
    predictions = service.batch(texts)
    ids = [p["prediction_id"] for p in predictions]
    # At once, before the log is flushed: the service waits for the ids to be written.
    first = service.feedback({"prediction_id": ids[0], "label": int(truth[0])})
    assert first.status_code == 202 and first.json() == {"accepted": 1, "replaced": []}
    items = [{"prediction_id": i, "label": int(t)} for i, t in zip(ids[1:], truth[1:], strict=True)]
    assert service.feedback({"items": items}).json()["accepted"] == 299

    expected = float(np.mean([p["label"] for p in predictions] == truth))
    accuracy = _version(service.monitoring())["live_accuracy"]
    assert accuracy["labelled"] == 300 and accuracy["value"] == pytest.approx(expected)
    assert 0.3 < expected < 1 and accuracy["low"] < expected < accuracy["high"]

    # A second label replaces the first, and the answer says so.
    wrong = (int(truth[0]) + 1) % 10
    again = service.feedback({"items": [{"prediction_id": ids[0], "label": wrong}]})
    assert again.status_code == 202 and again.json()["replaced"] == [ids[0]]
    right_before = predictions[0]["label"] == truth[0]
    changed = (int(predictions[0]["label"] == wrong) - int(right_before)) / 300
    accuracy = _version(service.monitoring())["live_accuracy"]
    assert accuracy["value"] == pytest.approx(expected + changed)


def test_an_unknown_prediction_id_is_a_404_and_nothing_of_its_batch_is_stored(service):
    known = service.batch(service.texts[:1])[0]["prediction_id"]
    before = _version(service.monitoring())["feedback"]
    answer = service.feedback(
        {"items": [{"prediction_id": known, "label": 1}, {"prediction_id": "f" * 24, "label": 2}]}
    )
    assert answer.status_code == 404 and answer.json()["unknown"] == ["f" * 24]
    assert "unknown or expired" in answer.json()["error"]
    assert _version(service.monitoring())["feedback"] == before
    bad = service.feedback({"prediction_id": known, "label": 10})
    assert bad.status_code == 422 and "label" in bad.json()["error"]


def test_drift_is_not_flagged_on_test_digits_and_is_on_rotated_ones_and_metrics_agree(service):
    service.batch(service.texts)  # 1,000 test digits: the window holds only them
    time.sleep(3 * FLUSH_SECONDS)
    report = _version(service.monitoring(window=1000))
    assert report["drift"]["window"] == 1000 and report["drift"]["method"] == "ks-bonferroni+chi2"
    assert not report["drift"]["detected"], report["drift"]
    assert sum(report["label_histogram"]) == 1000 and sum(report["reference_histogram"]) == 10_000

    # Rotated, not inverted: preprocessing turns dark-on-light digits back (mindtrace.preprocess).
    rotated = [pil_to_ascii(ascii_to_pil(t).rotate(90)) for t in service.texts[:500]]
    service.batch(rotated)
    time.sleep(3 * FLUSH_SECONDS)
    report = _version(service.monitoring())  # the configured window (1,000): half of it rotated
    drift = report["drift"]
    assert drift["detected"] and drift["p_value"] < 1e-6, drift

    metrics = requests.get(service.url + "/metrics", timeout=30).text
    assert _metric(metrics, "mindtrace_drift_detected") == 1
    assert _metric(metrics, "mindtrace_drift_p_value") == pytest.approx(
        drift["p_value"], rel=1e-6, abs=1e-300
    )
    accuracy = report["live_accuracy"]
    assert _metric(metrics, "mindtrace_live_accuracy") == pytest.approx(accuracy["value"])
    assert _metric(metrics, "mindtrace_live_accuracy_labelled") == accuracy["labelled"]


def test_mindtrace_monitor_prints_what_the_service_reports(service, tmp_path):
    def monitor(*options: str) -> subprocess.CompletedProcess:
        command = [str(BIN / "mindtrace"), "monitor", "--url", service.url, *options]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    printed = json.loads(monitor("--json").stdout)
    assert printed == service.monitoring()  # no traffic in between: the same report
    png = tmp_path / "drift.png"
    table = monitor("--png", str(png))
    assert table.returncode == 0 and "DETECTED" in table.stdout and "monitoring of mnist-mlp" in table.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gone = subprocess.run([str(BIN / "mindtrace"), "monitor", "--url", "http://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert gone.returncode == 1 and "cannot reach the service" in gone.stdout


def test_a_worker_killed_mid_write_loses_at_most_its_unflushed_batch_and_corrupts_nothing(service):
    """Eight clients send small batches; one worker is SIGKILLed. Every id answered more than a flush
    interval (plus slack) before the kill is in the log, and the file passes SQLite's integrity check."""
    workers = {requests.get(service.url + "/model", timeout=10).json()["worker_pid"] for _ in range(20)}
    victim = min(workers)
    answered: list[tuple[float, list[str]]] = []
    start, kill_at, stop_at = time.monotonic(), 2.0, 5.0

    def client(k: int) -> None:
        with requests.Session() as session:
            while time.monotonic() - start < stop_at:
                try:
                    body = {"images": service.texts[k * 8 : k * 8 + 8]}
                    r = session.post(service.url + "/inference/batch", json=body, timeout=30)
                except requests.RequestException:
                    continue
                if r.status_code == 200:
                    answered.append(
                        (time.monotonic() - start, [p["prediction_id"] for p in r.json()["predictions"]])
                    )

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    time.sleep(kill_at)
    os.kill(victim, signal.SIGKILL)
    for t in threads:
        t.join()
    time.sleep(3 * FLUSH_SECONDS)

    with service.database() as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        chunks = db.execute(
            "SELECT n, ids, length(labels), length(probabilities), length(pixels) FROM chunks"
        )
        chunks = chunks.fetchall()
    assert all((len(ids), labels, probs, pixels) == (24 * n, n, 40 * n, 784 * n)
               for n, ids, labels, probs, pixels in chunks)  # fmt: skip
    logged = {pid for _, ids, *_ in chunks for pid in split_ids(ids)}
    settled = [i for t, ids in answered if t < kill_at - FLUSH_SECONDS - 0.5 for i in ids]
    missing = [i for i in settled if i not in logged]
    assert settled and not missing, f"{len(missing)} of {len(settled)} settled predictions are not logged"
    lost = sum(1 for _, ids in answered for i in ids if i not in logged)
    total = sum(len(ids) for _, ids in answered)
    print(f"killed worker {victim}: {lost} of {total} answered predictions unlogged")


def test_retention_keeps_the_newest_rows(service):
    for _ in range(MAX_ROWS // 1000):
        service.batch(service.texts)  # 40,000 more: past the bound

    def bounded() -> bool:
        with service.database() as db:
            return db.execute("SELECT sum(n) FROM chunks").fetchone()[0] <= MAX_ROWS

    wait_for(bounded, 30, f"the log to hold at most {MAX_ROWS} predictions")
    with service.database() as db:
        newest = db.execute("SELECT max(last_at) FROM chunks").fetchone()[0]
    assert time.time() - newest < 30


def test_drift_starts_one_retraining_job_with_the_feedback_digits(tmp_path, real_mnist_dir):
    """[MONITORING] RETRAIN_ON = drift: rotated digits start one job (not one per refresh or request), which
    trains with the 200 feedback-labelled digits added and records why it was started."""
    small = tmp_path / "retrain.json"
    small.write_text(json.dumps({"epochs": 1, "num_train": 3000, "hidden_dims": [32], "policy": "always"}))
    env = service_env(
        tmp_path / "home", real_mnist_dir.parent, tmp_path / "bentoml",
        MINDTRACE__SERVICE__WORKERS="1",
        MINDTRACE__MONITORING__FLUSH_SECONDS="0.2",
        MINDTRACE__MONITORING__REFRESH_SECONDS="1",
        MINDTRACE__MONITORING__WINDOW="300",
        MINDTRACE__MONITORING__RETRAIN_ON="drift",
        MINDTRACE__MONITORING__RETRAIN_CONFIG=str(small),
    )  # fmt: skip
    train(env, tmp_path, "--policy", "always")
    texts, labels = random_test_digits(real_mnist_dir, 300, seed=11)
    with served(env, tmp_path / "serve.log") as (url, _):
        answer = requests.post(url + "/inference/batch", json={"images": texts[:200]}, timeout=60).json()
        items = [{"prediction_id": p["prediction_id"], "label": int(label)}
                 for p, label in zip(answer["predictions"], labels[:200], strict=True)]  # fmt: skip
        assert requests.post(url + "/feedback", json={"items": items}, timeout=30).status_code == 202
        time.sleep(3)  # refreshes on unshifted digits: no job
        assert requests.get(url + "/jobs", timeout=30).json() == []

        rotated = [pil_to_ascii(ascii_to_pil(t).rotate(90)) for t in texts]
        for _ in range(5):  # five refresh intervals of drifted traffic
            requests.post(url + "/inference/batch", json={"images": rotated}, timeout=60)
            time.sleep(1)
        jobs = requests.get(url + "/jobs", timeout=30).json()
        assert len(jobs) == 1, jobs
        job = jobs[0]
        assert job["trigger"].startswith("monitoring: drift detected on version 1"), job["trigger"]
        assert job["request"]["with_feedback"] is True

        def finished() -> dict | None:
            state = requests.get(f"{url}/jobs/{job['id']}", timeout=30).json()
            return state if state["status"] in ("succeeded", "failed") else None

        state = wait_for(finished, 300, "the triggered job to finish")
        assert state["status"] == "succeeded", state["error"]
        version = requests.get(f"{url}/registry/models/mnist-mlp/versions/{state['registered_version']}",
                               timeout=30).json()  # fmt: skip
        assert version["params"]["data.extra_digits"] == "200"
        assert len(requests.get(url + "/jobs", timeout=30).json()) == 1
