"""What GET /monitoring, the Prometheus gauges and ``mindtrace monitor`` say about one model version.

One function, :func:`version_report`, joins the prediction log's window with the feedback labels and the
version's drift reference, so the three surfaces always agree.

>>> live_accuracy(np.array([1, 2, 3, 4]), np.array([1, 2, 3, 0]), window=500).value
0.75
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

from mindtrace.monitoring.drift import NUM_CLASSES, DriftVerdict, Reference, detect
from mindtrace.monitoring.store import PredictionLog

if TYPE_CHECKING:
    from mindtrace.config import Config

Z_95 = 1.959963984540054  # the standard normal's 97.5th percentile


class LiveAccuracy(BaseModel):
    """Accuracy on the newest labelled predictions, with a 95 % Wilson score interval."""

    value: float | None = Field(description="correct / labelled; None before any feedback")
    low: float | None
    high: float | None
    labelled: int = Field(description="feedback labels in the window")
    window: int = Field(description="at most this many of the newest labelled predictions")


class MonitoringSettings(BaseModel):
    """The windows and the drift test's level; the ``[MONITORING]`` section holds the defaults."""

    window: int = Field(1000, ge=1, le=100_000, description="newest predictions compared with the reference")
    accuracy_window: int = Field(1000, ge=1, le=100_000, description="newest labelled predictions")
    alpha: float = Field(0.05, gt=0, lt=1, description="the drift test's significance level")
    min_window: int = Field(100, ge=2, description="fewer predictions than this give no drift verdict")

    @classmethod
    def from_config(cls, config: Config) -> MonitoringSettings:
        """The ``[MONITORING]`` section's values.

        >>> from mindtrace.config import Config
        >>> MonitoringSettings.from_config(Config(env={})).window
        1000
        """
        section = config["MONITORING"]
        return cls(
            window=section.getint("WINDOW"),
            accuracy_window=section.getint("ACCURACY_WINDOW"),
            alpha=section.getfloat("ALPHA"),
            min_window=section.getint("MIN_WINDOW"),
        )


class VersionReport(BaseModel):
    """One version, as GET /monitoring reports it."""

    model: str
    version: str
    served: bool = Field(description="whether this service answers with it now")
    requests: int = Field(description="predictions of this version in the log (within retention)")
    feedback: int = Field(description="of those, how many have a feedback label")
    live_accuracy: LiveAccuracy
    label_histogram: list[int] = Field(description="predicted labels 0-9 in the drift window")
    reference_histogram: list[int] | None = Field(description="predicted labels 0-9 on the reference set")
    drift: DriftVerdict


class MonitoringReport(BaseModel):
    """GET /monitoring: the model, and one report per version asked about (by default, those served)."""

    model: str
    versions: list[VersionReport]


def wilson(correct: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: sound at 0, at 1 and for small ``n``.

    >>> [round(x, 3) for x in wilson(9, 10)]
    [0.596, 0.982]
    """
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At 0 and n the interval ends exactly at 0 and 1; the formula's rounding would leave 1 - 1e-16.
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


def live_accuracy(predicted: np.ndarray, truth: np.ndarray, window: int) -> LiveAccuracy:
    """Accuracy of ``predicted`` against ``truth`` with its interval."""
    n = len(truth)
    if n == 0:
        return LiveAccuracy(value=None, low=None, high=None, labelled=0, window=window)
    correct = int((predicted == truth).sum())
    low, high = wilson(correct, n)
    return LiveAccuracy(value=correct / n, low=low, high=high, labelled=n, window=window)


def version_report(
    log: PredictionLog,
    model: str,
    version: str,
    reference: Reference | None,
    settings: MonitoringSettings,
    served: bool = False,
) -> VersionReport:
    """Requests, feedback, live accuracy, label histogram and drift verdict of ``version``."""
    requests, feedback = log.count(model, version)
    probs = log.recent(model, version, settings.window)
    predicted, truth = log.labelled(model, version, settings.accuracy_window)
    if reference is None:
        drift = DriftVerdict(
            detected=False,
            p_value=None,
            window=len(probs),
            reference="none",
            alpha=settings.alpha,
            note="this version has no drift reference (imported before references were recorded)",
        )
    else:
        drift = detect(reference, probs, settings.alpha, settings.min_window)
    return VersionReport(
        model=model,
        version=version,
        served=served,
        requests=requests,
        feedback=feedback,
        live_accuracy=live_accuracy(predicted, truth, settings.accuracy_window),
        label_histogram=np.bincount(probs.argmax(axis=1), minlength=NUM_CLASSES).tolist(),
        reference_histogram=None if reference is None else reference.histogram.tolist(),
        drift=drift,
    )
