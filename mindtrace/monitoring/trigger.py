"""When monitoring starts a retraining job by itself: the ``[MONITORING] RETRAIN_ON`` policy (off by default).

A served version that drifts, or whose live accuracy falls below a bound on enough feedback labels, earns
one retraining job, started with the feedback-labelled inputs added to the training data
(``TrainConfig.with_feedback``). The promotion gate still decides whether the new version serves. Once per
version: the prediction log records the claim (``PredictionLog.claim_trigger``), so neither the next
refresh, nor another worker, nor a replica sharing the log starts a second job for the same version.

>>> from mindtrace.config import Config
>>> RetrainPolicy.from_config(Config(env={})).on
'off'
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from mindtrace.train_config import TrainRequest

if TYPE_CHECKING:
    from mindtrace.config import Config
    from mindtrace.monitoring.report import VersionReport


class RetrainPolicy(BaseModel):
    """What starts a job: ``drift``, ``accuracy``, ``any`` of the two, or nothing (``off``)."""

    on: Literal["off", "drift", "accuracy", "any"] = "off"
    below_accuracy: float = Field(0.9, ge=0, le=1, description="live accuracy below this starts a job")
    min_labels: int = Field(100, ge=1, description="feedback labels needed before accuracy may start one")
    config_file: Path | None = Field(None, description="the job's training config (default: the defaults)")

    @classmethod
    def from_config(cls, config: Config) -> RetrainPolicy:
        section = config["MONITORING"]
        return cls(
            on=section["RETRAIN_ON"].strip().lower(),
            below_accuracy=section.getfloat("RETRAIN_BELOW_ACCURACY"),
            min_labels=section.getint("RETRAIN_MIN_LABELS"),
            config_file=section.getpath("RETRAIN_CONFIG"),
        )

    def reason(self, report: VersionReport) -> str | None:
        """Why ``report``'s version should be retrained, or None."""
        drift, accuracy = report.drift, report.live_accuracy
        if self.on in ("drift", "any") and drift.detected:
            return (
                f"drift detected on version {report.version} (p={drift.p_value:.2g}, window {drift.window})"
            )
        if (
            self.on in ("accuracy", "any")
            and accuracy.value is not None
            and accuracy.labelled >= self.min_labels
            and accuracy.value < self.below_accuracy
        ):
            return (
                f"live accuracy {accuracy.value:.3f} below {self.below_accuracy:g} on version "
                f"{report.version} ({accuracy.labelled} feedback labels)"
            )
        return None

    def request(self) -> TrainRequest:
        """The job's training request: the config file's (or the defaults), with the feedback digits."""
        base = TrainRequest() if self.config_file is None else TrainRequest.from_file(self.config_file)
        return base.model_copy(update={"with_feedback": True})
