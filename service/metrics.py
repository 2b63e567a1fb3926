"""The service's own Prometheus metrics, served on /metrics beside BentoML's request metrics.

``bentoml.metrics`` hands them to BentoML's multiprocess collector, so /metrics adds up every worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import bentoml
import numpy as np

if TYPE_CHECKING:
    from service.model import Served

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
