"""Faults injected into a real service: the registry's store locked, gone or corrupt while it serves, and
retraining jobs killed at every stage, a disk that fills up under an import and under a job.

The service (``bentoml serve``, two workers) serves version 1 of a small model trained by the real CLI;
version 2 is registered beside it, not promoted. Each test puts things back as it found them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from mindtrace.config import Config
from mindtrace.data.digits import mnist_test_digits
from mindtrace.jobs import ACTIVE, JobStore
from mindtrace.registry import Registry
from mindtrace.registry.schemas import DECISION_TAG
from mindtrace.train_config import TrainRequest
from tests.helpers import BIN, served, service_env, train, wait_for

pytestmark = pytest.mark.slow


@dataclass
class Service:
    url: str
    home: Path
    env: dict[str, str]
    digit: str  # a real test digit, a 7

    def models(self) -> requests.Response:
        return requests.get(self.url + "/registry/models", timeout=60)

    def served_versions(self, n: int = 12) -> set[str]:
        body = {"image": self.digit}
        answers = [requests.post(self.url + "/inference", json=body, timeout=10) for _ in range(n)]
        assert all(a.status_code == 200 and a.json()["label"] == 7 for a in answers), answers[0].text
        return {a.json()["model"]["version"] for a in answers}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, real_mnist_dir: Path) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("faults")
    env = service_env(root / "home", real_mnist_dir.parent, root / "bentoml", MINDTRACE__SERVICE__WORKERS="2")
    assert train(env, root, "--policy", "always")["registered_version"] == "1"
    assert train(env, root, "--policy", "never", "--seed", "3")["registered_version"] == "2"
    digit = mnist_test_digits(1, real_mnist_dir).texts[0]
    with served(env, root / "serve.log") as (url, _):
        yield Service(url, root / "home", env, digit)


@contextlib.contextmanager
def _locked(database: Path) -> Iterator[None]:
    """Another process's view of a store: an exclusive SQLite lock held for the block."""
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        connection.close()  # rolls back, releasing the lock


def _refused_quickly(service: Service, within: float) -> str:
    t0 = time.monotonic()
    r = service.models()
    took = time.monotonic() - t0
    print(f"GET /registry/models: {r.status_code} in {took * 1000:.0f} ms")
    assert r.status_code == 503, r.text
    assert took < within, f"the 503 took {took:.1f} s"
    assert r.headers["Retry-After"] == "5" and "inference keeps serving" in r.json()["error"]
    return r.json()["error"]


def test_a_locked_store_gets_quick_503s_while_inference_serves_and_is_used_again_once_free(service):
    assert service.models().status_code == 200
    with _locked(service.home / "mlflow" / "mlflow.db"):
        # MLflow would wait 20 s for the lock; the service gives up after REGISTRY_TIMEOUT_SECONDS (5 s)...
        assert "did not answer within 5 s" in _refused_quickly(service, within=8)
        # ...and while that call still waits, refuses at once (the other worker's first call waits 5 s too).
        for _ in range(4):
            _refused_quickly(service, within=8)
            assert service.served_versions(4) == {"1"}
    wait_for(lambda: service.models().status_code == 200, 30, "the registry routes to answer again")


def test_a_store_gone_or_corrupt_is_a_503_and_a_store_back_with_a_new_champion_is_followed(service):
    store, away = service.home / "mlflow", service.home / "mlflow.away"
    store.rename(away)
    try:
        assert "unable to open database file" in _refused_quickly(service, within=2)
        assert service.served_versions() == {"1"}
        # The store comes back (restored elsewhere, say) with the champion moved: the service must read the
        # file now at the path, not a connection to the one that left.
        elsewhere = Config(env={"MINDTRACE_HOME": str(service.home)})
        Registry(f"sqlite:///{away}/mlflow.db", elsewhere).set_alias(None, "champion", "2", reason="restored")
        (store / "mlflow.db").parent.mkdir()
        (store / "mlflow.db").write_bytes(b"this is no SQLite database " * 200)
        assert "file is not a database" in _refused_quickly(service, within=2)
        assert service.served_versions() == {"1"}
    finally:
        shutil.rmtree(store, ignore_errors=True)
        away.rename(store)
    back = time.monotonic()
    # Version 2 is imported by the leader worker (a child process with torch), then every worker serves it.
    wait_for(lambda: service.served_versions() == {"2"}, 120, "every worker to serve the restored champion")
    print(f"the store back, version 2 champion: every worker serves it {time.monotonic() - back:.1f} s later")
    assert service.models().json()[0]["aliases"]["champion"] == "2"
    rollback = service.url + "/registry/models/mnist-mlp/aliases/champion/rollback"
    requests.post(rollback, timeout=60).raise_for_status()
    wait_for(lambda: service.served_versions() == {"1"}, 60, "the rollback to version 1")


# --- a retraining job killed at each stage ------------------------------------------------------------------

TINY_JOB = TrainRequest.model_validate(
    {"epochs": 1, "num_train": 3000, "hidden_dims": [32], "seed": 11, "promotion": {"policy": "always"}}
)


@pytest.mark.parametrize(
    ("failpoint", "outcome"),
    [
        ("data", "as before"),
        ("training", "as before"),
        ("registration", "as before"),
        ("alias-move:champion", "fully moved"),
        ("import", "fully moved"),
    ],
)
def test_a_job_killed_at_each_stage_leaves_the_registry_as_before_or_fully_moved(
    service, monkeypatch, failpoint, outcome
):
    """The job's process SIGKILLs itself at a failpoint (``mindtrace.faults``): no cleanup runs. The job
    must be reported failed with the stage, and the registry and the served model must be as before the job
    or as after a finished one, never in between."""
    for key, value in service.env.items():
        if key.startswith(("MINDTRACE", "BENTOML")):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("MINDTRACE_FAILPOINT", failpoint)
    registry = Registry(config=Config())
    versions_before = {v.version for v in registry.list_versions()}
    champion_before = registry.alias_target(None, "champion")

    store = JobStore(service.home / "jobs")
    job = store.submit(TINY_JOB)
    state = wait_for(lambda: (s := store.get(job.id)).status not in ACTIVE and s, 180, "the job to end")
    print(f"{failpoint}: {state.error}")
    assert state.status == "failed"
    assert "SIGKILL" in state.error or "without reporting" in state.error
    stage = failpoint.split(":")[0].replace("alias-move", "registration")
    assert f"during its {stage} stage" in state.error

    versions = registry.list_versions()
    by_alias = {alias: v.version for v in versions for alias in v.aliases}
    assert all(v.tags.get(DECISION_TAG) for v in versions), "a version the gate never judged is left"
    if state.mlflow_run_id:  # a run killed before it ended is marked so; the import comes after its end
        run_status = registry.client.get_run(state.mlflow_run_id).info.status
        assert run_status == ("FINISHED" if failpoint == "import" else "KILLED")
    if outcome == "as before":
        assert {v.version for v in versions} == versions_before
        assert by_alias.get("champion") == champion_before
        assert service.served_versions() == {champion_before}
        return
    new = max(versions, key=lambda v: int(v.version)).version
    assert new not in versions_before and by_alias.get("champion") == new and "challenger" not in by_alias
    if failpoint.startswith("alias-move"):
        assert f"the move of champion to version {new} logged" in state.error
        assert f"challenger alias removed from version {new}" in state.error
    champion_log = registry.alias_history(None, "champion")
    assert champion_log[-1].version == new and champion_log[-1].previous == champion_before
    # The job died before (or while) importing it: the service imports it and serves it.
    wait_for(lambda: service.served_versions() == {new}, 120, f"the service to serve version {new}")
    # The log is exact: a rollback returns to the champion before the job.
    registry.rollback(None, "champion", reason="test")
    wait_for(lambda: service.served_versions() == {champion_before}, 60, "the rollback")


# --- a full disk --------------------------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small filesystem needs root (CI is)")


@contextlib.contextmanager
def _small_disk(path: Path, size: str) -> Iterator[Path]:
    """A real filesystem of ``size`` (tmpfs) mounted at ``path`` for the block: writes past it get ENOSPC."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def _import(env: dict[str, str], version: str) -> subprocess.CompletedProcess:
    command = [str(BIN / "mindtrace"), "registry", "import", version]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@needs_root
def test_an_import_onto_a_full_disk_fails_in_a_line_and_stores_nothing(service, tmp_path):
    store = tmp_path / "bentoml"
    env = {**service.env, "BENTOML_HOME": str(store)}
    with _small_disk(store, "64k"):
        full = _import(env, "1")
        output = full.stdout + full.stderr
        assert full.returncode == 1 and "Traceback" not in output, output
        assert "could not write mnist-mlp:" in output and "No space left on device" in output
        assert not list((store / "models").glob("*/v*")), "a half-written entry was left in the store"
        subprocess.run(["mount", "-o", "remount,size=32m", str(store)], check=True)  # space freed
        assert _import(env, "1").returncode == 0
        again = _import(env, "1")  # finds the entry whole (its files match their digests)
        assert again.returncode == 0 and "already in the BentoML store" in again.stdout


@needs_root
def test_a_job_that_runs_out_of_disk_fails_with_the_reason_and_registers_nothing(
    tmp_path, real_mnist_dir, monkeypatch
):
    home = tmp_path / "home"
    for key, value in service_env(home, real_mnist_dir.parent, tmp_path / "bentoml").items():
        monkeypatch.setenv(key, value)
    store = JobStore(home / "jobs")
    with _small_disk(home / "mlflow" / "artifacts", "128k") as artifacts:
        job = store.submit(TINY_JOB)
        state = wait_for(lambda: (s := store.get(job.id)).status not in ACTIVE and s, 180, "the job to end")
        print(state.error)
        assert state.status == "failed" and "No space left on device" in state.error
        assert "during its registration stage" in state.error
        registry = Registry(config=Config())
        assert registry.list_models() == []  # nothing registered
        assert registry.client.get_run(state.mlflow_run_id).info.status == "FAILED"
        subprocess.run(["mount", "-o", "remount,size=64m", str(artifacts)], check=True)
        job = store.submit(TINY_JOB)
        state = wait_for(lambda: (s := store.get(job.id)).status not in ACTIVE and s, 180, "the second job")
        assert state.status == "succeeded" and state.promoted, state.error
        assert registry.alias_target(None, "champion") == state.registered_version
