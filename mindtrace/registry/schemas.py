"""What the registry answers with: pydantic models that serialize to JSON unchanged (CLI, HTTP, Python)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class AliasEvent(BaseModel):
    """One move of an alias, as kept in the registered model's alias log (rollback replays it)."""

    alias: str
    version: str | None = Field(description="where the alias points after the move; None when removed")
    previous: str | None = Field(description="where it pointed before; None when it was unset")
    action: Literal["set", "rollback", "remove"]
    reason: str = ""
    actor: str = ""
    at: datetime


class VersionInfo(BaseModel):
    """One registered model version with the run that produced it."""

    name: str
    version: str
    aliases: list[str]
    status: str
    description: str = ""
    created_at: datetime
    updated_at: datetime
    tags: dict[str, str] = Field(description="the version's tags, including the promotion gate's decision")
    run_id: str | None
    run_status: str | None = None
    run_started_at: datetime | None = None
    run_ended_at: datetime | None = None
    experiment_id: str | None = None
    params: dict[str, str] = {}
    metrics: dict[str, float] = {}
    run_tags: dict[str, str] = {}
    artifacts: dict[str, str] = Field(
        {}, description="URIs: model (the MLflow model), run (all artifacts), checkpoint, confusion_matrix"
    )


class ModelSummary(BaseModel):
    """A registered model: its aliases and latest versions."""

    name: str
    description: str = ""
    created_at: datetime
    updated_at: datetime
    aliases: dict[str, str] = Field(description="alias -> version")
    latest_versions: list[str] = Field(description="the newest version numbers, newest first")
    num_versions: int
    tags: dict[str, str] = {}


class MetricDelta(BaseModel):
    a: float | None
    b: float | None
    delta: float | None = Field(description="b - a, when both have the metric")


class Comparison(BaseModel):
    """Two versions side by side: metrics with their differences, and the parameters that differ."""

    name: str
    a: str
    b: str
    metrics: dict[str, MetricDelta]
    params_changed: dict[str, tuple[str | None, str | None]]
    same_data: bool = Field(description="both runs saw the same data fingerprint")


# The gate records its decision as tags on the version (``mindtrace.gate.decision = promoted``...). A version
# without the decision tag was never judged: its registration is not finished (``recovery.py``).
GATE_TAG_PREFIX = "mindtrace.gate."
DECISION_TAG = f"{GATE_TAG_PREFIX}decision"


class GateDecision(BaseModel):
    """What the promotion gate decided about a challenger, and why."""

    promoted: bool
    policy: str
    metric: str
    margin: float
    reason: str
    challenger_version: str
    challenger_score: float | None
    champion_version: str | None
    champion_score: float | None
    evaluated_on: str = Field(description="the test set both models were scored on")
    rollout: str | None = Field(
        None, description="the rollout started instead of an immediate promotion (policy option rollout)"
    )
