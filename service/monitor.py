"""Watching the served model: POST /feedback, GET /monitoring, and the gauges on /metrics.

``Monitor`` joins this worker's view (which versions it serves, and their drift references) with the
prediction log that every worker writes (``service.recorder``). Reports come from one function,
``mindtrace.monitoring.version_report``, whether a request asks for them or the leader worker refreshes the
Prometheus gauges every ``[MONITORING] REFRESH_SECONDS``; every report also sets the gauges, so /metrics
says what /monitoring last said.

>>> monitor = Monitor(store, recorder, predictor, MonitoringSettings(), "mnist-mlp")   # doctest: +SKIP
>>> monitor.report().versions[0].drift.detected                                       # doctest: +SKIP
False
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

import bentoml
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from mindtrace.jobs import JobConflict, JobState
from mindtrace.monitoring import (
    MonitoringReport,
    MonitoringSettings,
    PredictionLog,
    Reference,
    version_report,
)
from mindtrace.monitoring.drift import preload
from mindtrace.monitoring.store import FeedbackResult, id_time
from mindtrace.monitoring.trigger import RetrainPolicy
from mindtrace.train_config import TrainRequest
from service import metrics
from service.batching import Predictor
from service.errors import error_response
from service.recorder import Recorder
from service.schemas import ErrorBody

log = logging.getLogger("mindtrace.service")
router = APIRouter()
MAX_FEEDBACK = 1024


class FeedbackItem(BaseModel):
    """The true label of one logged prediction."""

    model_config = ConfigDict(extra="forbid")

    prediction_id: str = Field(
        min_length=1, max_length=64, examples=["019ac9f3e2a47c1d9e5b20f4"], description="from the answer"
    )
    label: int = Field(ge=0, le=9, examples=[7], description="the digit the image really shows")


class FeedbackBatch(BaseModel):
    """True labels of many logged predictions."""

    model_config = ConfigDict(extra="forbid")

    items: list[FeedbackItem] = Field(min_length=1, max_length=MAX_FEEDBACK)


class FeedbackAccepted(BaseModel):
    accepted: int = Field(description="labels stored")
    replaced: list[str] = Field(description="prediction ids that had a label, which this one replaced")


class Monitor:
    """Feedback and reports for the versions this worker serves; see the module docstring."""

    def __init__(
        self,
        store: PredictionLog,
        recorder: Recorder,
        predictor: Predictor,
        settings: MonitoringSettings,
        model: str,
        policy: RetrainPolicy | None = None,
        retrain: Callable[[TrainRequest, str], JobState] | None = None,
    ):
        self.store = store
        self.recorder = recorder
        self.predictor = predictor
        self.settings = settings
        self.model = model
        self.policy = policy or RetrainPolicy()
        self.retrain = retrain  # submits a job: (request, why) -> its state
        self._references: dict[str, Reference | None] = {}
        self._published: set[str] = set()  # versions whose gauges this worker has set
        self._froze_scipy = False

    def served(self) -> dict[str, Reference | None]:
        """The versions this worker answers with now (the champion, and a rollout's candidate), and their
        references."""
        models = (self.predictor.current, self.predictor.candidate)
        return {m.version: m.reference for m in models if m is not None}

    def report(self, version: str | None = None, window: int | None = None) -> MonitoringReport:
        """Every served version (or only ``version``, served or not), over ``window`` predictions."""
        served = self.served()
        settings = self.settings if window is None else self.settings.model_copy(update={"window": window})
        versions = list(served) if version is None else [version]
        reports = []
        for v in versions:
            reference = served[v] if v in served else self._stored_reference(v)
            report = version_report(self.store, self.model, v, reference, settings, served=v in served)
            if window is None:  # the gauges hold the configured window's figures only
                metrics.monitored(report)
                self._published.add(v)
            reports.append(report)
        if version is None:
            for gone in self._published - set(served):  # no alert for a version that no longer serves
                metrics.unmonitored(self.model, gone)
            self._published &= set(served)
        self._freeze_once()
        return MonitoringReport(model=self.model, versions=reports)

    def feedback(self, labels: dict[str, int]) -> FeedbackResult:
        """Store true labels; ids not logged yet get one flush interval to appear (another worker's queue).

        During a shadow rollout a label also scores the candidate's shadow prediction of the request, found
        when the label is stored: labels for predictions younger than a flush interval wait that long, so
        that the shadow prediction (made after the answer) is in the log."""
        rollout = self.predictor.rollout
        if rollout is not None and rollout.mode == "shadow":
            youngest = max((id_time(pid) or 0.0 for pid in labels), default=0.0)
            wait = self.recorder.flush_seconds + 0.25  # at most: an id's time is the client's to make up
            time.sleep(min(wait, max(0.0, youngest + wait - time.time())))
        self.recorder.flush()
        result = self.store.add_feedback(labels)
        if result.unknown:
            time.sleep(self.recorder.flush_seconds + 0.25)
            result = self.store.add_feedback(labels)
        if result.accepted:
            metrics.feedback_accepted(result.accepted)
        return result

    def start_refresh(self, interval: float) -> None:
        """Recompute the gauges every ``interval`` seconds in a background thread, and apply the retraining
        policy to what they say (the leader worker)."""
        preload()  # SciPy: before the worker freezes its start-up heap and takes requests

        def loop() -> None:
            while True:
                time.sleep(interval)
                try:
                    self.maybe_retrain(self.report())
                except Exception:  # noqa: BLE001 - the next round tries again
                    log.exception("refreshing the monitoring gauges failed")

        threading.Thread(target=loop, name="monitoring-refresh", daemon=True).start()

    def maybe_retrain(self, report: MonitoringReport) -> JobState | None:
        """Start the retraining job a served version has earned (``RetrainPolicy``), once per version."""
        if self.policy.on == "off" or self.retrain is None:
            return None
        for version in report.versions:
            why = self.policy.reason(version)
            if why is None or not self.store.claim_trigger(self.model, version.version, why):
                continue  # nothing wrong, or this version's job was started already
            try:
                job = self.retrain(self.policy.request(), f"monitoring: {why}")
            except JobConflict:
                self.store.release_trigger(self.model, version.version)  # tried again once that job ends
                return None
            except Exception:
                self.store.release_trigger(self.model, version.version)
                raise
            metrics.retrain_triggered()
            log.warning("started retraining job %s: %s", job.id, why)
            return job
        return None

    def _stored_reference(self, version: str) -> Reference | None:
        """The reference of a version this worker does not serve, from its BentoML store entry."""
        if version not in self._references:
            from mindtrace.registry.bento import bento_model_name, load_reference

            reference = None
            try:
                entries = bentoml.models.list(bento_model_name(self.model))
            except Exception:  # noqa: BLE001 - no entry (NotFound) or an unreadable store: no reference
                entries = []
            for entry in sorted(entries, key=lambda m: m.info.creation_time, reverse=True):
                if entry.info.labels.get("mlflow-version") == version:
                    try:
                        reference = load_reference(entry)
                        break
                    except ValueError:
                        continue
            self._references[version] = reference
        return self._references[version]

    def _freeze_once(self) -> None:
        # SciPy's modules, loaded by the first drift test, live as long as the worker: out of the collector's
        # way like the rest of its start-up heap (service.settings.settle_the_collector).
        if not self._froze_scipy:
            self._froze_scipy = True
            gc.freeze()


def _service() -> Any:
    return bentoml.get_current_service()


@router.post(
    "/feedback",
    status_code=202,
    summary="True labels for logged predictions, one or many; live accuracy joins them",
    response_model=FeedbackAccepted,
    responses={
        404: {
            "model": ErrorBody,
            "description": "an unknown or expired prediction id (named in 'unknown'); nothing was stored",
        },
        422: {"model": ErrorBody, "description": "invalid body; the message names the field"},
    },
)
async def feedback(body: FeedbackItem | FeedbackBatch) -> Any:
    items = body.items if isinstance(body, FeedbackBatch) else [body]
    labels = {item.prediction_id: item.label for item in items}
    result = await run_in_threadpool(_service().monitor.feedback, labels)
    if result.unknown:
        shown = ", ".join(result.unknown[:5]) + (" ..." if len(result.unknown) > 5 else "")
        message = (
            f"{len(result.unknown)} prediction id(s) unknown or expired: {shown}; nothing was stored "
            "(only logged predictions can be labelled: see [MONITORING] SAMPLE and the retention)"
        )
        return error_response(404, message, unknown=result.unknown)
    return FeedbackAccepted(accepted=result.accepted, replaced=result.replaced)


@router.get(
    "/monitoring",
    summary="Per served version: requests, feedback, live accuracy, label histogram, drift verdict",
    response_model=MonitoringReport,
    responses={422: {"model": ErrorBody, "description": "invalid parameters; the message names the field"}},
)
def monitoring(
    request: Request,
    version: Annotated[
        str | None,
        Query(min_length=1, max_length=64, description="one version, served or not (default: the served)"),
    ] = None,
    window: Annotated[
        int | None, Query(ge=2, le=100_000, description="predictions in the drift window (default: config)")
    ] = None,
) -> Any:
    unknown = sorted(set(request.query_params) - {"version", "window"})
    if unknown:  # a misspelt parameter ("windows") would otherwise be ignored without a word
        return error_response(422, f"unknown query parameter(s) {', '.join(unknown)}: use version and window")
    return _service().monitor.report(version, window)
