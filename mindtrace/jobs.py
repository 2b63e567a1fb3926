"""Retraining jobs: one at a time, each in its own low-priority process, their state in files.

A job is a folder under ``[DIR_PATHS] JOBS`` holding ``state.json`` (rewritten atomically, so a reader never
sees half of it), ``log.txt`` (the process's output) and ``lock``. The job's process holds an ``flock`` on
``lock`` from the moment it is started until it exits, and the kernel drops that lock when the process dies,
however it dies. So any process (every service worker, a restarted service, the CLI) can tell a live job from
a dead one without trusting a pid: a job that is still "queued" or "running" while its lock is free has died,
and is recorded as failed with that reason.

>>> store = JobStore("/tmp/mindtrace-doctest-jobs")             # doctest: +SKIP
>>> job = store.submit(TrainRequest(epochs=1))                   # doctest: +SKIP
>>> store.get(job.id).status                                     # doctest: +SKIP
'running'
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from mindtrace.faults import failpoint
from mindtrace.train_config import TrainRequest
from mindtrace.utils import atomic_write, exclusive_lock

Status = Literal["queued", "running", "succeeded", "failed"]
Stage = Literal["data", "training", "registration", "import"]
ACTIVE: tuple[Status, ...] = ("queued", "running")
# Jobs yield the CPU to inference: niceness 10 gives a job about a tenth of a busy core.
NICENESS = 10
# A job id names its folder, so nothing else may pass for one (no '..', no '/'): its time, then random hex.
JOB_ID_PATTERN = r"^\d{8}-\d{6}-[0-9a-f]{6}$"


class JobProgress(BaseModel):
    """How far training got: the epoch just finished, out of how many, and that epoch's metrics."""

    epoch: int = 0
    max_epochs: int = 0
    metrics: dict[str, float] = Field(default_factory=dict)


class JobState(BaseModel):
    """Everything known about a job, as stored in its ``state.json`` and served by ``GET /jobs/{id}``."""

    id: str
    status: Status
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    request: dict[str, Any]
    trigger: str = Field(default="api", description="why it was started: 'api', or the monitoring's reason")
    stage: Stage | None = Field(default=None, description="what the job was doing last")
    progress: JobProgress = Field(default_factory=JobProgress)
    metrics: dict[str, Any] = Field(default_factory=dict, description="the run's summary once it finished")
    mlflow_run_id: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    promoted: bool | None = None
    decision_reason: str | None = None
    rollout: str | None = Field(default=None, description="the rollout the gate started instead of promoting")
    error: str | None = None
    pid: int | None = None


class JobConflict(RuntimeError):
    """Another job is queued or running; ``job`` is its state."""

    def __init__(self, job: JobState):
        super().__init__(f"job {job.id} is {job.status}; one retraining job runs at a time")
        self.job = job


class JobStore:
    """The job folders under ``root``: submit, read, list; safe to use from many processes at once."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def submit(
        self,
        request: TrainRequest,
        on_exit: Callable[[JobState], None] | None = None,
        trigger: str = "api",
    ) -> JobState:
        """Start a job for ``request`` in a new process; raises ``JobConflict`` while another one is active.

        ``on_exit`` is called (in a thread of this process) with the final state once the process ends;
        ``trigger`` says why the job was started.
        """
        with exclusive_lock(self.root / "submit.lock", "another retraining request"):
            active = self.active()
            if active is not None:
                raise JobConflict(active)
            now = datetime.now(timezone.utc)
            job_id = f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
            folder = self.root / job_id
            folder.mkdir()
            state = JobState(
                id=job_id, status="queued", created_at=now, request=request.model_dump(), trigger=trigger
            )
            self._write(state)
            # The lock is taken here and handed to the child, so the job never looks dead before it starts.
            lock_fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                with open(folder / "log.txt", "ab") as log:
                    process = subprocess.Popen(
                        [sys.executable, "-m", "mindtrace.jobs", str(folder), str(lock_fd)],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        pass_fds=(lock_fd,),
                        start_new_session=True,  # a restart of the service does not kill the job
                    )
            except BaseException as exc:
                self._write(state.model_copy(update=_failure(f"could not start the job: {exc}")))
                raise
            finally:
                os.close(lock_fd)
        threading.Thread(target=self._reap, args=(job_id, process, on_exit), daemon=True).start()
        return state

    def get(self, job_id: str) -> JobState:
        """The state of job ``job_id``; raises KeyError when there is no such job."""
        path = self.root / job_id / "state.json"
        if not re.fullmatch(JOB_ID_PATTERN, job_id) or not path.is_file():
            raise KeyError(job_id)
        state = self._read(job_id)
        if state.status in ACTIVE and not _locked(self.root / job_id / "lock"):
            state = self._reread_dead(state)
        return state

    def list(self, limit: int = 50) -> list[JobState]:
        """The newest ``limit`` jobs, newest first."""
        ids = sorted((p.name for p in self.root.iterdir() if (p / "state.json").is_file()), reverse=True)
        return [self.get(job_id) for job_id in ids[:limit]]

    def active(self) -> JobState | None:
        """The job that is queued or running, if any."""
        return next((job for job in self.list(limit=1_000_000) if job.status in ACTIVE), None)

    def update(self, job_id: str, **changes: Any) -> JobState:
        """Write new values into a job's state (used by the job's own process)."""
        state = self._read(job_id).model_copy(update=changes)
        self._write(state)
        return state

    def _read(self, job_id: str) -> JobState:
        return JobState.model_validate_json((self.root / job_id / "state.json").read_text())

    def _reread_dead(self, state: JobState) -> JobState:
        return self._died(state.id, f"(pid {state.pid}) ended without reporting a result")

    def _died(self, job_id: str, how: str) -> JobState:
        """Record, once, that a job's process died without reporting (``how``), and settle what it left half
        done in the registry (``mindtrace.registry.recovery``); the reason says at which stage, and what the
        settling did."""
        with exclusive_lock(self.root / job_id / "settle.lock", "another process recording the job's end"):
            state = self._read(job_id)  # its process may have reported meanwhile, or a reader its death
            if state.status not in ACTIVE:
                return state
            during = f" during its {state.stage} stage" if state.stage else ""
            reason = f"the job's process {how}{during}; see {job_id}/log.txt"
            if state.mlflow_run_id:
                reason += f"; {_settle(state.mlflow_run_id)}"
            return self.update(job_id, **_failure(reason))

    def _reap(
        self, job_id: str, process: subprocess.Popen, on_exit: Callable[[JobState], None] | None
    ) -> None:
        code = process.wait()
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        state = self._read(job_id)
        if state.status in ACTIVE:
            state = self._died(job_id, how)
        elif code != 0 and state.error is None:
            state = self.update(job_id, **_failure(f"the job's process {how}; see {job_id}/log.txt"))
        if on_exit is not None:
            on_exit(state)

    def _write(self, state: JobState) -> None:
        with atomic_write(self.root / state.id / "state.json") as tmp:
            tmp.write_text(state.model_dump_json(indent=2))


def _locked(path: Path) -> bool:
    """True while some process holds the flock on ``path``."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock if we took it
    return False


def _settle(run_id: str) -> str:
    """Settle dead run ``run_id`` in the registry; what was done, in words. Loads MLflow's client: a service
    worker that has none yet loads it only when a job dies."""
    from mindtrace.registry.errors import RegistryError
    from mindtrace.registry.query import Registry
    from mindtrace.registry.recovery import settle_run

    try:
        done = settle_run(Registry(), run_id)
    except RegistryError as exc:
        return f"what it left in the registry could not be settled: {exc}"
    return f"settled in the registry: {'; '.join(done)}" if done else "it left nothing in the registry"


def _failure(reason: str) -> dict[str, Any]:
    return {"status": "failed", "error": reason, "finished_at": datetime.now(timezone.utc)}


def run_job(folder: Path) -> int:
    """The body of a job's process: train, register and gate, recording progress and outcome in the folder."""
    import pytorch_lightning as pl

    from mindtrace.registry.callback import MlflowLightningCallback
    from mindtrace.train import train_and_register
    from mindtrace.utils import epoch_metrics

    store, job_id = JobStore(folder.parent), folder.name
    state = store.update(
        job_id, status="running", stage="data", started_at=datetime.now(timezone.utc), pid=os.getpid()
    )
    request = TrainRequest.model_validate(state.request)
    failpoint("data")

    class Progress(pl.Callback):
        """Records the stage, the MLflow run (so that a job that dies can be settled) and each epoch."""

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            tracker = next((c for c in trainer.callbacks if isinstance(c, MlflowLightningCallback)), None)
            store.update(job_id, stage="training", mlflow_run_id=tracker.run_id if tracker else None)
            failpoint("training")

        def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            store.update(job_id, stage="registration")  # the tracker's on_fit_end, after this one, registers

        def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.sanity_checking:
                return
            progress = JobProgress(
                epoch=trainer.current_epoch + 1,
                max_epochs=trainer.max_epochs or 0,
                metrics=epoch_metrics(trainer.callback_metrics),
            )
            store.update(job_id, progress=progress)

    try:
        summary = train_and_register(request, callbacks=[Progress()], progress=False)
        if summary.get("promoted") or summary.get("rollout"):
            # The service swaps in a new champion (or a rollout's candidate) once it is in the BentoML store;
            # importing it here, where torch is loaded already, spares every worker the import (DESIGN.md).
            from mindtrace.registry import import_version

            store.update(job_id, stage="import")
            import_version(summary["registered_version"], summary["registered_model"])
    except BaseException as exc:
        traceback.print_exc()
        stage = store.get(job_id).stage
        store.update(job_id, **_failure(f"{type(exc).__name__} during its {stage} stage: {exc}"))
        return 1
    store.update(
        job_id,
        status="succeeded",
        finished_at=datetime.now(timezone.utc),
        metrics=json.loads(json.dumps(summary, default=str)),
        mlflow_run_id=summary.get("mlflow_run_id"),
        registered_model=summary.get("registered_model"),
        registered_version=summary.get("registered_version"),
        promoted=summary.get("promoted"),
        decision_reason=summary.get("gate_reason"),
        rollout=summary.get("rollout"),
    )
    return 0


if __name__ == "__main__":
    # argv: the job folder, and the number of the inherited descriptor that holds the job's lock. The
    # descriptor is simply kept open: the lock lasts exactly as long as this process.
    os.nice(NICENESS)
    sys.exit(run_job(Path(sys.argv[1])))
