"""Retraining jobs on disk: one at a time; a job whose process died is reported failed, never "running"."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timezone

import pytest

from mindtrace.jobs import JobConflict, JobState, JobStore
from mindtrace.train_config import TrainRequest


def _wait(store: JobStore, job_id: str, condition, timeout: float = 120) -> JobState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = store.get(job_id)
        if condition(state):
            return state
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} stayed {store.get(job_id).status}")


@pytest.mark.slow
def test_one_job_at_a_time_and_a_killed_job_is_failed_with_its_reason(tmp_path, mnist_home):
    store = JobStore(tmp_path / "jobs")
    job = store.submit(TrainRequest(epochs=100, num_train=50_000, promotion={"policy": "never"}))
    assert job.status == "queued"
    with pytest.raises(JobConflict) as conflict:
        store.submit(TrainRequest(epochs=1))
    assert conflict.value.job.id == job.id

    running = _wait(store, job.id, lambda s: s.status == "running")
    os.kill(running.pid, signal.SIGKILL)  # the process this test started, through the store
    failed = _wait(store, job.id, lambda s: s.status == "failed")
    assert "ended without reporting" in failed.error or "SIGKILL" in failed.error
    assert failed.finished_at is not None
    # Another process (a second worker, a restarted service) reads the same verdict from disk.
    assert JobStore(tmp_path / "jobs").get(job.id).status == "failed"
    assert store.active() is None


def test_a_running_job_without_a_live_process_is_failed_on_read(tmp_path):
    store = JobStore(tmp_path)
    state = JobState(
        id="20260101-000000-abcdef",
        status="running",
        created_at=datetime.now(timezone.utc),
        request=TrainRequest().model_dump(),
        pid=999_999_999,
    )
    (tmp_path / state.id).mkdir()
    (tmp_path / state.id / "state.json").write_text(state.model_dump_json())
    (tmp_path / state.id / "lock").touch()  # nobody holds it: the process is gone
    seen = store.get(state.id)
    assert seen.status == "failed" and "pid 999999999" in seen.error
    assert store.list()[0].status == "failed"


def test_unknown_and_malicious_job_ids_are_not_found(tmp_path):
    store = JobStore(tmp_path / "jobs")
    for job_id in ["nope", "../etc", ".", "..", "a/b"]:
        with pytest.raises(KeyError):
            store.get(job_id)
