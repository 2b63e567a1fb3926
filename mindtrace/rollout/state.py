"""A staged rollout's settings and state, kept in the registry where every worker and replica reads them.

A rollout puts a *candidate* version beside the champion: in ``shadow`` mode it also predicts a share of
the requests off the answer path, in ``canary`` mode it answers a share of them. Its whole state is one tag
of the registered model, ``mindtrace.rollout`` (JSON of :class:`Rollout`), and the ``challenger`` alias
points at the candidate while it runs. So a service's workers, its replicas and a restarted service all
follow the same rollout (``service.watcher``), and the CLI reads and changes it without the service.

Starting and ending are serialised by a file lock per model (like the alias moves), and ending is
compare-and-set on the rollout's id: two replicas that decide at once end it once.

>>> request = RolloutRequest(version="4", mode="canary", percent=10)
>>> start(Registry(), None, request).status                 # doctest: +SKIP
'running'
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mindtrace.registry.errors import ConflictError, InvalidQueryError, NotFoundError
from mindtrace.utils import exclusive_lock

if TYPE_CHECKING:
    from mindtrace.config import Config
    from mindtrace.registry.query import Registry

ROLLOUT_TAG = "mindtrace.rollout"
VERSION_TAG_PREFIX = "mindtrace.rollout."  # on the candidate: status, reason, evidence
CHAMPION, CHALLENGER = "champion", "challenger"
Mode = Literal["shadow", "canary"]
Status = Literal["running", "promoted", "rolled-back", "aborted"]
STATUSES: tuple[Status, ...] = ("running", "promoted", "rolled-back", "aborted")
HEADER_PATTERN = r"^[A-Za-z0-9-]{1,64}$"


class Criteria(BaseModel):
    """When a rollout decides, and what the candidate must show to be promoted.

    The candidate is promoted once it has ``min_requests`` predictions and both versions have
    ``min_labels`` feedback labels, if it is at least as good as the champion on every count below (within
    the margins); otherwise it is rolled back. With too little evidence after ``max_minutes``, it is rolled
    back too: a candidate must earn its promotion.
    """

    model_config = ConfigDict(extra="forbid")

    min_requests: int = Field(1000, ge=1, le=10_000_000, description="candidate predictions before deciding")
    min_labels: int = Field(
        200, ge=0, le=1_000_000, description="feedback labels each version needs before deciding"
    )
    max_minutes: float = Field(60.0, gt=0, le=10_080, description="decide (roll back) after this long")
    accuracy_margin: float = Field(
        0.0, ge=0, le=1, description="candidate live accuracy >= champion's minus this"
    )
    min_agreement: float = Field(
        0.0, ge=0, le=1, description="shadow: share of requests where both versions give the same label"
    )
    error_margin: float = Field(0.001, ge=0, le=1, description="candidate error rate <= champion's plus this")
    p99_margin_ms: float = Field(
        5.0, ge=0, le=60_000, description="candidate p99 model-call latency <= champion's plus this"
    )

    @classmethod
    def from_config(cls, config: Config) -> Criteria:
        """The ``[ROLLOUT]`` section's defaults.

        >>> from mindtrace.config import Config
        >>> Criteria.from_config(Config(env={})).min_requests
        1000
        """
        section = config["ROLLOUT"]
        return cls(**{name: section[name.upper()] for name in cls.model_fields})


class RolloutRequest(Criteria):
    """The body of ``POST /registry/models/{name}/rollout`` and what ``mindtrace rollout start`` takes.

    >>> RolloutRequest(mode="shadow").percent, RolloutRequest(mode="canary").percent
    (100.0, 10.0)
    """

    version: str = Field(
        CHALLENGER, min_length=1, max_length=64, description="the candidate: a version or an alias"
    )
    mode: Mode = Field("canary", description="canary: it answers a share; shadow: it predicts off the path")
    percent: float | None = Field(
        None, ge=0, le=100, description="share of requests it answers (canary, default 10) or shadows (100)"
    )
    sticky_header: str | None = Field(
        None,
        pattern=HEADER_PATTERN,
        description="a request header whose value picks the version, so that one client sees one version "
        "(default: each request at random)",
        examples=["X-Client-Id"],
    )

    @model_validator(mode="after")
    def _default_percent(self) -> RolloutRequest:
        if self.percent is None:
            self.percent = 100.0 if self.mode == "shadow" else 10.0
        return self

    def criteria(self) -> Criteria:
        return Criteria.model_validate(self.model_dump(include=set(Criteria.model_fields)))


class VersionEvidence(BaseModel):
    """One version's record since the rollout started."""

    version: str
    requests: int = Field(description="requests answered (or shadowed) by this version")
    images: int
    errors: int = Field(description="requests whose model call failed")
    error_rate: float | None
    p99_ms: float | None = Field(description="99th percentile of the model-call latency, per request")
    labelled: int = Field(description="feedback labels on its predictions")
    accuracy: float | None = Field(description="live accuracy on those labels")


class Evidence(BaseModel):
    """What a rollout has seen so far: both versions, and how the traffic and the answers compare."""

    seconds: float = Field(description="since the rollout started")
    champion: VersionEvidence
    candidate: VersionEvidence
    share: float | None = Field(description="observed share of requests the candidate answered or shadowed")
    agreement: float | None = Field(description="shadow: share of shadowed requests given the same label")
    compared: int = Field(0, description="shadow: requests behind the agreement")


class Rollout(BaseModel):
    """A rollout: what it compares, how, its criteria, and how it ended (GET .../rollout)."""

    id: str
    model: str
    mode: Mode
    percent: float
    sticky_header: str | None = None
    champion: str = Field(description="the champion's version when it started")
    candidate: str
    criteria: Criteria
    status: Status = "running"
    started_at: datetime
    ended_at: datetime | None = None
    reason: str | None = Field(None, description="why it ended")
    evidence: Evidence | None = Field(None, description="at the decision; while running, as of now")
    started_by: str = "api"
    ended_by: str | None = None

    @property
    def running(self) -> bool:
        return self.status == "running"

    def picks(self, key: str | None, draw: float) -> bool:
        """Whether a request goes to the candidate: by its sticky ``key`` when it has one (the same key
        always gets the same version during this rollout), else by ``draw`` (uniform in [0, 1)).

        >>> r = Rollout(id="r1", model="m", mode="canary", percent=10, champion="1", candidate="2",
        ...             criteria=Criteria(), started_at=datetime(2026, 1, 1))
        >>> r.picks(None, 0.05), r.picks(None, 0.5), r.picks("client-7", 0.0) == r.picks("client-7", 0.9)
        (True, False, True)
        """
        if key is not None:
            digest = hashlib.blake2b(f"{self.id}\0{key}".encode(), digest_size=8).digest()
            draw = int.from_bytes(digest, "big") / 2**64
        return draw * 100 < self.percent


def _actor(name: str | None) -> str:
    # Imported here: the alias moves import MLflow, which a follower worker reading a rollout never needs.
    from mindtrace.registry.aliases import actor_name

    return actor_name(name)


def current(registry: Registry, name: str | None = None) -> Rollout | None:
    """The model's current or last rollout; None when it never had one."""
    return from_tags(registry.model_tags(registry.model_name(name)))


def from_tags(tags: dict[str, str]) -> Rollout | None:
    """The rollout recorded in a registered model's ``tags``; None when there is none.

    >>> from_tags({"team": "vision"}) is None
    True
    """
    text = tags.get(ROLLOUT_TAG)
    return None if text is None else Rollout.model_validate_json(text)


def start(registry: Registry, name: str | None, request: RolloutRequest, actor: str | None = None) -> Rollout:
    """Start a rollout of ``request.version`` against the champion: ``challenger`` alias, then the state.

    Raises ``ConflictError`` while another rollout of the model runs or when there is no champion to
    compare with, ``NotFoundError`` for an unknown version, ``InvalidQueryError`` for the champion itself.
    ``actor`` (who started it) defaults to the login name, as for alias moves.
    """
    name = registry.model_name(name)
    with _locked(registry, name):
        running = current(registry, name)
        if running is not None and running.running:
            raise ConflictError(
                f"rollout {running.id} of {name!r} (version {running.candidate}, {running.mode}) is running; "
                "stop it first (DELETE .../rollout or `mindtrace rollout stop`)"
            )
        candidate = registry.get_version(name, request.version).version
        champion = registry.alias_target(name, CHAMPION)
        if champion is None:
            raise ConflictError(f"{name!r} has no champion to compare a candidate with; promote one first")
        if candidate == champion:
            raise InvalidQueryError(f"version {candidate} is the champion already; roll out another version")
        now = datetime.now(timezone.utc)
        rollout = Rollout(
            id=f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}",
            model=name,
            mode=request.mode,
            percent=float(request.percent or 0),
            sticky_header=request.sticky_header,
            champion=champion,
            candidate=candidate,
            criteria=request.criteria(),
            started_at=now,
            started_by=_actor(actor),
        )
        why = f"{rollout.mode} rollout {rollout.id}"
        registry.set_alias(name, CHALLENGER, candidate, reason=why, actor=actor)
        registry.set_model_tag(name, ROLLOUT_TAG, rollout.model_dump_json())
        registry.set_version_tags(name, candidate, {f"{VERSION_TAG_PREFIX}status": "running"})
    return rollout


def finish(
    registry: Registry,
    name: str | None,
    rollout_id: str,
    status: Status,
    reason: str,
    evidence: Evidence | None = None,
    actor: str | None = None,
) -> tuple[Rollout, bool]:
    """End rollout ``rollout_id`` with ``status``: a promotion moves ``champion`` to the candidate, any end
    takes the ``challenger`` alias off it; a candidate deleted from the registry meanwhile is rolled back
    rather than promoted. Returns the rollout as it ended and whether this call ended it (False when it had
    ended already: another replica decided first, or a person stopped it)."""
    name = registry.model_name(name)
    with _locked(registry, name):
        rollout = current(registry, name)
        if rollout is None:
            raise NotFoundError(f"{name!r} has no rollout")
        if rollout.id != rollout_id or not rollout.running:
            return rollout, False
        registered = _registered(registry, name, rollout.candidate)
        if status == "promoted" and not registered:
            status, reason = "rolled-back", f"version {rollout.candidate} was deleted from the registry"
        ended = rollout.model_copy(
            update={
                "status": status,
                "reason": reason,
                "evidence": evidence,
                "ended_at": datetime.now(timezone.utc),
                "ended_by": _actor(actor),
            }
        )
        why = f"rollout {rollout.id} {status}: {reason}"
        if status == "promoted":
            registry.set_alias(name, CHAMPION, rollout.candidate, reason=why, actor=actor)
        if registry.alias_target(name, CHALLENGER) == rollout.candidate:
            registry.remove_alias(name, CHALLENGER, reason=why, actor=actor)
        tags = {f"{VERSION_TAG_PREFIX}status": status, f"{VERSION_TAG_PREFIX}reason": reason[:4000]}
        if evidence is not None:
            tags[f"{VERSION_TAG_PREFIX}evidence"] = evidence.model_dump_json()
        if registered:  # a deleted candidate has no tags: its rollout's state below keeps the evidence
            registry.set_version_tags(name, rollout.candidate, tags)  # one tag a call: all before the state
        # The state last: whoever sees the rollout ended finds its evidence on the version; a process that
        # dies before the state leaves the rollout running, and its next look ends it.
        registry.set_model_tag(name, ROLLOUT_TAG, ended.model_dump_json())
    return ended, True


def _registered(registry: Registry, name: str, version: str) -> bool:
    try:
        registry.get_version(name, version)
    except NotFoundError:
        return False
    return True


def _locked(registry: Registry, name: str):  # noqa: ANN202 - a context manager
    key = hashlib.sha256(f"{registry.tracking_uri}\0{name}".encode()).hexdigest()[:16]
    lock = registry.config.home() / "locks" / f"rollout-{key}.lock"
    return exclusive_lock(lock, f"another rollout of {name!r}")
