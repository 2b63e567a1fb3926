"""The service's own Prometheus metrics, served on /metrics beside BentoML's request metrics.

``bentoml.metrics`` hands them to BentoML's multiprocess collector, so /metrics adds up every worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, get_args

import bentoml
import numpy as np

from mindtrace.rollout.state import Status as RolloutStatus

if TYPE_CHECKING:
    from mindtrace.monitoring import VersionReport
    from mindtrace.rollout import Rollout
    from service.batching import Served

PREDICTIONS = bentoml.metrics.Counter(
    name="mindtrace_predictions", documentation="Images classified, by predicted label", labelnames=["label"]
)
SERVED = bentoml.metrics.Gauge(
    name="mindtrace_served_model",
    documentation="1 for the registered model version each worker serves",
    labelnames=["name", "version"],
    multiprocess_mode="livemax",
)
SWAPS = bentoml.metrics.Counter(
    name="mindtrace_model_swaps",
    documentation="Model swaps by outcome (swapped: now serving; failed: not loadable, old model kept)",
    labelnames=["outcome"],
)
JOBS = bentoml.metrics.Counter(
    name="mindtrace_retrain_jobs", documentation="Finished retraining jobs by outcome", labelnames=["outcome"]
)
TRIGGERED = bentoml.metrics.Counter(
    name="mindtrace_retrain_triggered",
    documentation="Retraining jobs started by monitoring ([MONITORING] RETRAIN_ON)",
)
FEEDBACK = bentoml.metrics.Counter(
    name="mindtrace_feedback", documentation="Feedback labels accepted (POST /feedback)"
)
LOG_WRITTEN = bentoml.metrics.Counter(
    name="mindtrace_prediction_log_written", documentation="Predictions written to the prediction log"
)
LOG_DROPPED = bentoml.metrics.Counter(
    name="mindtrace_prediction_log_dropped",
    documentation="Sampled predictions not logged: the worker's queue was full or a write failed",
)
# Recomputed by the leader worker every [MONITORING] REFRESH_SECONDS and by every GET /monitoring; the most
# recent computation wins, so /metrics says what /monitoring last said. NaN: not enough data yet.
_BY_VERSION = {"labelnames": ["model", "version"], "multiprocess_mode": "livemostrecent"}
LIVE_ACCURACY = bentoml.metrics.Gauge(
    name="mindtrace_live_accuracy",
    documentation="Accuracy on the newest feedback-labelled predictions of each version",
    **_BY_VERSION,
)
LIVE_ACCURACY_LABELLED = bentoml.metrics.Gauge(
    name="mindtrace_live_accuracy_labelled",
    documentation="Feedback labels behind mindtrace_live_accuracy",
    **_BY_VERSION,
)
DRIFT_P_VALUE = bentoml.metrics.Gauge(
    name="mindtrace_drift_p_value",
    documentation="The drift test's p-value on each version's newest predictions (small: drifted)",
    **_BY_VERSION,
)
DRIFT_DETECTED = bentoml.metrics.Gauge(
    name="mindtrace_drift_detected",
    documentation="1 when the drift test rejects 'same distribution as the reference' at alpha",
    **_BY_VERSION,
)


def start_at_zero(model: str) -> None:
    """Create the outcome counters' series at 0 in this worker. A series that first appears at 1 has no
    earlier sample, so ``increase()`` and ``rate()`` miss its first event: without this, the first swap,
    finished job or rollout decision of each outcome would never show on a panel or fire an alert."""
    for outcome in ("swapped", "failed"):
        SWAPS.labels(outcome=outcome)
    for outcome in ("succeeded", "failed"):
        JOBS.labels(outcome=outcome)
    for outcome in get_args(RolloutStatus):
        if outcome != "running":
            ROLLOUT_DECISIONS.labels(model=model, outcome=outcome)


def count_predictions(labels: np.ndarray) -> None:
    for label, n in enumerate(np.bincount(labels, minlength=10)):
        if n:
            PREDICTIONS.labels(label=str(label)).inc(int(n))


def model_swapped(previous: Served | None, served: Served) -> None:
    if previous is not None:
        SERVED.labels(name=previous.name, version=previous.version).set(0)
    SERVED.labels(name=served.name, version=served.version).set(1)
    SWAPS.labels(outcome="swapped").inc()


def swap_failed() -> None:
    SWAPS.labels(outcome="failed").inc()


def job_finished(status: str) -> None:
    JOBS.labels(outcome=status).inc()


def retrain_triggered() -> None:
    TRIGGERED.inc()


def feedback_accepted(n: int) -> None:
    FEEDBACK.inc(n)


def log_written(n: int) -> None:
    LOG_WRITTEN.inc(n)


def log_dropped(n: int) -> None:
    LOG_DROPPED.inc(n)


def monitored(report: VersionReport) -> None:
    """Publish one version's live accuracy and drift verdict (``mindtrace.monitoring.report``)."""
    labels = {"model": report.model, "version": report.version}
    accuracy = report.live_accuracy
    LIVE_ACCURACY.labels(**labels).set(float("nan") if accuracy.value is None else accuracy.value)
    LIVE_ACCURACY_LABELLED.labels(**labels).set(accuracy.labelled)
    drift = report.drift
    DRIFT_P_VALUE.labels(**labels).set(float("nan") if drift.p_value is None else drift.p_value)
    DRIFT_DETECTED.labels(**labels).set(int(drift.detected))


def unmonitored(model: str, version: str) -> None:
    """Blank a version's gauges once it is no longer served (NaN: no value, no alert)."""
    labels = {"model": model, "version": version}
    for gauge in (LIVE_ACCURACY, DRIFT_P_VALUE):
        gauge.labels(**labels).set(float("nan"))
    LIVE_ACCURACY_LABELLED.labels(**labels).set(0)
    DRIFT_DETECTED.labels(**labels).set(0)


ROLLOUT_ROUTED = bentoml.metrics.Counter(
    name="mindtrace_rollout_requests",
    documentation="Requests during a rollout, by version and role (champion; canary: answered by the "
    "candidate; shadow: also predicted by the candidate)",
    labelnames=["model", "version", "role"],
)
ROLLOUT_DECISIONS = bentoml.metrics.Counter(
    name="mindtrace_rollout_decisions",
    documentation="Rollouts ended, by outcome (promoted, rolled-back, aborted)",
    labelnames=["model", "outcome"],
)
ROLLOUT_CANDIDATE = bentoml.metrics.Gauge(
    name="mindtrace_rollout_candidate",
    documentation="1 for the version each worker serves as a rollout's candidate, by mode",
    labelnames=["model", "version", "mode"],
    multiprocess_mode="livemax",
)
SHADOW_DROPPED = bentoml.metrics.Counter(
    name="mindtrace_shadow_dropped",
    documentation="Shadow predictions skipped because the worker's shadow queue was full",
)


def routed(model: str, version: str, role: str) -> None:
    ROLLOUT_ROUTED.labels(model=model, version=version, role=role).inc()


def rollout_serving(rollout: Rollout, serving: bool) -> None:
    ROLLOUT_CANDIDATE.labels(model=rollout.model, version=rollout.candidate, mode=rollout.mode).set(
        int(serving)
    )


def rollout_decided(model: str, outcome: str) -> None:
    ROLLOUT_DECISIONS.labels(model=model, outcome=outcome).inc()


def shadow_dropped(n: int) -> None:
    SHADOW_DROPPED.inc(n)
