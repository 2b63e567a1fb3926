"""Alias moves (promote, remove, roll back) and the alias log that makes a rollback exact.

Every move is appended to the registered model's tags as ``mindtrace.alias_log.000001``, ``...000002``, ...
holding the :class:`AliasEvent` as JSON. A rollback replays that log as a stack, so it returns the alias to
exactly the version it held before, however many moves and rollbacks came in between.

The moves are methods of :class:`~mindtrace.registry.query.Registry`, which inherits :class:`AliasMoves`;
the functions here know the log format and the alias rules and need no registry.

>>> registry.set_alias(None, "champion", "3", reason="beats v2")   # doctest: +SKIP
>>> registry.rollback(None, "champion").version                      # doctest: +SKIP
'2'
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

from mindtrace.faults import failpoint
from mindtrace.registry.errors import ConflictError, NotFoundError
from mindtrace.registry.mlflow_errors import mlflow_errors
from mindtrace.registry.names import check_alias
from mindtrace.registry.schemas import AliasEvent
from mindtrace.utils import exclusive_lock

if TYPE_CHECKING:
    from mlflow.entities.model_registry import RegisteredModel

    from mindtrace.registry.query import Registry

ALIAS_LOG_PREFIX = "mindtrace.alias_log."
Action = Literal["set", "rollback", "remove"]


def model_aliases(model: RegisteredModel) -> dict[str, str]:
    """A registered model's aliases, alias -> version; MLflow gives versions as int or str by store."""
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def aliases_by_version(aliases: Mapping[str, str]) -> dict[str, list[str]]:
    """Version -> its aliases.

    >>> aliases_by_version({"champion": "3", "stable": "3", "challenger": "4"})
    {'3': ['champion', 'stable'], '4': ['challenger']}
    """
    out: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        out.setdefault(version, []).append(alias)
    return out


def is_log_tag(key: str) -> bool:
    """Whether a registered model's tag is an alias log entry (listings hide them).

    >>> is_log_tag("mindtrace.alias_log.000001"), is_log_tag("team")
    (True, False)
    """
    return key.startswith(ALIAS_LOG_PREFIX)


def read_log(tags: Mapping[str, str] | None) -> list[AliasEvent]:
    """The alias moves recorded in a registered model's ``tags``, oldest first."""
    entries = sorted((key, value) for key, value in (tags or {}).items() if is_log_tag(key))
    return [AliasEvent.model_validate_json(value) for _, value in entries]


def next_log_key(tags: Mapping[str, str] | None) -> str:
    """The tag key for the next log entry; zero-padded so that the keys sort in the order they were written.

    >>> next_log_key({}), next_log_key({"mindtrace.alias_log.000009": "{}", "team": "vision"})
    ('mindtrace.alias_log.000001', 'mindtrace.alias_log.000010')
    """
    numbers = [int(key[len(ALIAS_LOG_PREFIX) :]) for key in tags or {} if is_log_tag(key)]
    return f"{ALIAS_LOG_PREFIX}{max(numbers, default=0) + 1:06d}"


def rollback_target(events: Iterable[AliasEvent]) -> str | None:
    """The version a rollback returns to, from one alias's moves (oldest first); None when there is none.

    Each set or remove pushes the version it replaced, each rollback pops it. So promote 2, promote 3,
    rollback, rollback gives 3, then 2, then 1 if 1 was champion before 2.

    >>> def move(action, previous):
    ...     return AliasEvent(alias="champion", version=None, previous=previous, action=action, at=0)
    >>> moves = [move("set", None), move("set", "1"), move("set", "2")]
    >>> rollback_target(moves), rollback_target([*moves, move("rollback", "3")])
    ('2', '1')
    >>> rollback_target(moves[:1]) is None  # the first promotion replaced nothing
    True
    """
    stack: list[str | None] = []
    for event in events:
        if event.action == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(event.previous)
    return stack[-1] if stack else None


def actor_name(name: str | None) -> str:
    """Who moved an alias: ``name``, else the login name, else ``unknown``.

    >>> actor_name("api")
    'api'
    """
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in some containers
        return "unknown"


class AliasMoves:
    """The :class:`Registry` methods that move aliases and append to the alias log.

    A mixin: the methods use the registry's client and reads, hence ``self: Registry``.
    """

    def set_alias(
        self: Registry,
        name: str | None,
        alias: str,
        version: str | int,
        reason: str = "",
        actor: str | None = None,
    ) -> AliasEvent:
        """Point ``alias`` at ``version`` (promotion) and log the move; a no-op if it already points there.

        >>> Registry().set_alias(None, "champion", 3, reason="beats v2")   # doctest: +SKIP
        """
        name = self.model_name(name)
        check_alias(alias)
        with self._moving(name, alias):
            target = self.get_version(name, str(version)).version  # a clear error for an unknown version
            previous = self.alias_target(name, alias)
            event = _event(alias, target, previous, "set", reason, actor)
            if previous == target:
                return event
            with mlflow_errors(f"model {name!r} has no version {target}"):
                self.client.set_registered_model_alias(name, alias, target)
            failpoint(f"alias-move:{alias}")
            self._log(name, event)
        return event

    def remove_alias(
        self: Registry, name: str | None, alias: str, reason: str = "", actor: str | None = None
    ) -> AliasEvent:
        """Unset ``alias``, logging the move so that a rollback can restore it.

        >>> Registry().remove_alias(None, "challenger", reason="rejected")   # doctest: +SKIP
        """
        name = self.model_name(name)
        with self._moving(name, alias):
            previous = self.alias_target(name, alias)
            if previous is None:
                raise NotFoundError(f"model {name!r} has no alias {alias!r}")
            with mlflow_errors(f"model {name!r} has no alias {alias!r}"):
                self.client.delete_registered_model_alias(name, alias)
            event = _event(alias, None, previous, "remove", reason, actor)
            self._log(name, event)
        return event

    def rollback(
        self: Registry,
        name: str | None = None,
        alias: str = "champion",
        reason: str = "",
        actor: str | None = None,
    ) -> AliasEvent:
        """Move ``alias`` back to the version it held before its last move (see :func:`rollback_target`).

        >>> Registry().rollback(None, "champion").version   # doctest: +SKIP
        '2'
        """
        name, alias = self.model_name(name), check_alias(alias)
        with self._moving(name, alias):
            target = rollback_target(self.alias_history(name, alias))
            if target is None:
                raise ConflictError(f"alias {alias!r} of {name!r} has no earlier version to roll back to")
            self.get_version(name, target)  # it may have been deleted since
            current = self.alias_target(name, alias)
            with mlflow_errors(f"model {name!r} has no version {target}"):
                self.client.set_registered_model_alias(name, alias, target)
            event = _event(alias, target, current, "rollback", reason, actor)
            self._log(name, event)
        return event

    @contextlib.contextmanager
    def _moving(self: Registry, name: str, alias: str) -> Iterator[None]:
        """One alias move of a model at a time, across this machine's processes (the API's workers, retraining
        jobs, the CLI): a move reads where the alias points and appends to the log, and two moves interleaved
        would log one over the other. A file lock under ``MINDTRACE_HOME``, one per registry and model.

        Inside it, a move of ``alias`` that was made but never logged is logged first (see
        :meth:`_log_unlogged_move`), so that every move starts from a log that matches the registry."""
        key = hashlib.sha256(f"{self.tracking_uri}\0{name}".encode()).hexdigest()[:16]
        lock = self.config.home() / "locks" / f"alias-moves-{key}.lock"
        with exclusive_lock(lock, f"another alias move of {name!r}"):
            self._log_unlogged_move(name, alias)
            yield

    def _log_unlogged_move(self: Registry, name: str, alias: str) -> None:
        """A move is two writes, the alias and then its log entry: a process that died between them (or a move
        made outside mindtrace, in MLflow's UI) leaves the alias where the log does not say. Logged late here,
        a rollback still returns to the version the alias held before that move."""
        events = self.alias_history(name, alias)
        logged = events[-1].version if events else None
        actual = self.alias_target(name, alias)
        if actual != logged:
            reason = "recorded late: the alias was moved without a log entry (its process stopped, or MLflow)"
            self._log(name, _event(alias, actual, logged, "set" if actual else "remove", reason, "mindtrace"))

    def _log(self: Registry, name: str, event: AliasEvent) -> None:
        key = next_log_key(self._registered(name).tags)
        with mlflow_errors(f"no registered model named {name!r}"):
            self.client.set_registered_model_tag(name, key, event.model_dump_json())


def _event(
    alias: str, version: str | None, previous: str | None, action: Action, reason: str, actor: str | None
) -> AliasEvent:
    return AliasEvent(
        alias=alias, version=version, previous=previous, action=action, reason=reason,
        actor=actor_name(actor), at=datetime.now(timezone.utc),
    )  # fmt: skip
