"""The registry query interface: one class behind the CLI, the HTTP endpoints and the promotion gate.

Models and versions live in MLflow's model registry (the embedded SQLite store by default, or a tracking
server by URI). Aliases (``champion``, ``challenger``) name versions; every alias move is appended to a log
kept in the registered model's tags, so a rollback returns exactly to the version the alias held before.

>>> registry = Registry()                                        # doctest: +SKIP
>>> registry.get_version("mnist-mlp", "champion").metrics["test_acc"]   # doctest: +SKIP
0.9847
>>> registry.list_versions("mnist-mlp", where=["metrics.test_acc>=0.98"], order_by="metrics.test_acc desc")
... # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import getpass
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mindtrace.config import Config
from mindtrace.registry.errors import (
    InvalidQueryError,
    NotFoundError,
    RegistryError,
    RegistryUnavailableError,
)
from mindtrace.registry.schemas import AliasEvent, Comparison, MetricDelta, ModelSummary, VersionInfo
from mindtrace.registry.tracking import tracking_uri as configured_uri
from mindtrace.utils import ifnone

if TYPE_CHECKING:
    from mindtrace.models import MLPNet

ALIAS_LOG_PREFIX = "mindtrace.alias_log."
ARTIFACT_TAG_PREFIX = "mindtrace.artifact."  # run tags naming artifacts: mindtrace.artifact.checkpoint = path
DATA_DIGEST_TAG = "mindtrace.data.digest"
_PAGE = 1000


@contextlib.contextmanager
def _mlflow_errors(missing: str) -> Iterator[None]:
    """Translate MLflow's exceptions into the registry's, with ``missing`` as the not-found message."""
    try:
        yield
    except MlflowException as exc:
        message = str(exc)
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in message.lower():
            raise NotFoundError(missing) from None
        if "API request to" in message and "failed" in message:
            raise RegistryUnavailableError(f"the registry cannot be reached: {message}") from None
        raise RegistryError(message) from None
    except OSError as exc:  # a database file that cannot be opened, a refused connection
        raise RegistryUnavailableError(f"the registry cannot be reached: {exc}") from None


def _when(millis: int | None) -> datetime | None:
    return None if millis is None else datetime.fromtimestamp(millis / 1000, tz=timezone.utc)


class Registry:
    """Query and change the model registry.

    Args:
        tracking_uri: default ``[MLFLOW] TRACKING_URI`` (the embedded SQLite store under ``MINDTRACE_HOME``).
        config: settings; default ``Config()``.

    Every ``name`` argument defaults to ``[MLFLOW] REGISTERED_MODEL`` (``mnist-mlp``). Methods raise
    :class:`NotFoundError`, :class:`InvalidQueryError` or :class:`RegistryUnavailableError` with a readable
    message.
    """

    def __init__(self, tracking_uri: str | None = None, config: Config | None = None):
        self.config = ifnone(config, Config())
        self.tracking_uri = ifnone(tracking_uri, configured_uri(self.config))
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self.default_name = self.config["MLFLOW"]["REGISTERED_MODEL"]

    # --- reading --------------------------------------------------------------------------------------------

    def list_models(self) -> list[ModelSummary]:
        """Every registered model with its aliases, newest versions and version count."""
        with _mlflow_errors("no registered models"):
            models = list(self._pages(lambda token: self.client.search_registered_models(page_token=token)))
        summaries = []
        for m in models:
            versions = self._all_versions(m.name)
            summaries.append(
                ModelSummary(
                    name=m.name,
                    description=m.description or "",
                    created_at=_when(m.creation_timestamp),
                    updated_at=_when(m.last_updated_timestamp),
                    aliases=_aliases(m),
                    latest_versions=[str(v.version) for v in versions[:5]],
                    num_versions=len(versions),
                    tags={k: v for k, v in (m.tags or {}).items() if not k.startswith(ALIAS_LOG_PREFIX)},
                )
            )
        return sorted(summaries, key=lambda s: s.name)

    def list_versions(
        self,
        name: str | None = None,
        *,
        where: Sequence[str] = (),
        order_by: str | None = None,
        limit: int | None = None,
    ) -> list[VersionInfo]:
        """Versions of ``name`` with their runs' metadata, filtered and ordered.

        Args:
            where: conditions that must all hold, ``KEY OP VALUE`` with OP one of ``= != > >= < <=``.
                KEY is ``version``, ``alias``, ``status``, ``run_id``, ``created_at``, or ``metrics.X``,
                ``params.X``, ``tags.X`` (version tags), ``run_tags.X``. Numbers compare as numbers.
            order_by: ``KEY [asc|desc]`` with the same keys; default ``version desc``.
            limit: at most this many, after filtering and ordering.

        >>> Registry().list_versions(where=["metrics.test_acc >= 0.98", "alias = champion"])  # doctest: +SKIP
        """
        name = self.model_name(name)
        conditions = [_parse_condition(w) for w in where]
        key, descending = _parse_order(order_by)
        model = self._registered(name)
        by_version = _aliases_by_version(_aliases(model))
        infos = [self._info(v, by_version.get(str(v.version), [])) for v in self._all_versions(name)]
        infos = [i for i in infos if all(condition(i) for condition in conditions)]
        present = [i for i in infos if _field(i, key) is not None]
        absent = [i for i in infos if _field(i, key) is None]  # missing values go last, either way
        present.sort(key=lambda i: _sort_key(_field(i, key)), reverse=descending)
        if limit is not None and limit < 0:
            raise InvalidQueryError(f"limit must be 0 or more; got {limit}")
        return (present + absent)[:limit]

    def get_version(self, name: str | None = None, ref: str | int = "champion") -> VersionInfo:
        """One version by number (``"3"`` or ``3``) or by alias (``"champion"``), with all its metadata."""
        name = self.model_name(name)
        ref = str(ref).strip()
        model = self._registered(name)
        try:
            if ref.isdigit():
                with _mlflow_errors(f"model {name!r} has no version {ref}"):
                    version = self.client.get_model_version(name, ref)
            else:
                if ref not in _aliases(model):
                    raise NotFoundError(f"model {name!r} has no alias {ref!r}")
                with _mlflow_errors(f"model {name!r} has no alias {ref!r}"):
                    version = self.client.get_model_version_by_alias(name, ref)
        except NotFoundError as exc:
            raise NotFoundError(f"{exc}; {self._known(name, model)}") from None
        return self._info(version, _aliases_by_version(_aliases(model)).get(str(version.version), []))

    def alias_target(self, name: str | None = None, alias: str = "champion") -> str | None:
        """The version number ``alias`` points to, in one registry call; None when the alias is unset.

        Cheap enough to poll: the service asks it every few seconds to follow the champion.
        """
        return _aliases(self._registered(self.model_name(name))).get(alias)

    def compare(self, name: str | None, a: str | int, b: str | int) -> Comparison:
        """Versions ``a`` and ``b`` side by side: each metric with ``b - a``, and the differing parameters."""
        name = self.model_name(name)
        va, vb = self.get_version(name, a), self.get_version(name, b)
        metrics = {}
        for key in sorted(set(va.metrics) | set(vb.metrics)):
            x, y = va.metrics.get(key), vb.metrics.get(key)
            metrics[key] = MetricDelta(a=x, b=y, delta=None if x is None or y is None else y - x)
        params = {
            key: (va.params.get(key), vb.params.get(key))
            for key in sorted(set(va.params) | set(vb.params))
            if va.params.get(key) != vb.params.get(key)
        }
        digest_a, digest_b = va.run_tags.get(DATA_DIGEST_TAG), vb.run_tags.get(DATA_DIGEST_TAG)
        return Comparison(
            name=name,
            a=va.version,
            b=vb.version,
            metrics=metrics,
            params_changed=params,
            same_data=digest_a is not None and digest_a == digest_b,
        )

    def alias_history(self, name: str | None = None, alias: str | None = None) -> list[AliasEvent]:
        """Every recorded alias move of ``name``, oldest first; only ``alias``'s when given."""
        model = self._registered(self.model_name(name))
        events = [
            AliasEvent.model_validate_json(value)
            for key, value in sorted((model.tags or {}).items())
            if key.startswith(ALIAS_LOG_PREFIX)
        ]
        return [e for e in events if alias is None or e.alias == alias]

    def load_module(self, name: str | None = None, ref: str | int = "champion") -> tuple[MLPNet, VersionInfo]:
        """Download version ``ref`` and rebuild its eager ``MLPNet`` (no pickle is loaded)."""
        from mindtrace.registry.artifacts import load_mlp  # torch and Lightning: only when a model is needed

        info = self.get_version(name, ref)
        with tempfile.TemporaryDirectory(prefix="mindtrace-model-") as tmp:
            path = self.download_model(info, Path(tmp))
            try:
                return load_mlp(path), info
            except ValueError as exc:
                raise RegistryError(
                    f"version {info.version} of {info.name!r} cannot be loaded: {exc}"
                ) from None

    def download_model(self, info: VersionInfo, dst: Path) -> Path:
        """Copy a version's MLflow model folder into ``dst``; returns the folder."""
        import mlflow.artifacts

        with _mlflow_errors(f"the model files of version {info.version} of {info.name!r} are missing"):
            return Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=info.artifacts["model"], dst_path=str(dst), tracking_uri=self.tracking_uri
                )
            )

    # --- changing -------------------------------------------------------------------------------------------

    def register(
        self, run_id: str, source: str, name: str | None = None, tags: dict[str, str] | None = None
    ) -> VersionInfo:
        """Register the model at ``source`` (an artifact URI of run ``run_id``) as a new version."""
        name = self.model_name(name)
        with _mlflow_errors(f"run {run_id} not found"):
            try:
                self.client.get_registered_model(name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                with contextlib.suppress(MlflowException):  # another process may create it at the same time
                    self.client.create_registered_model(
                        name, description="MNIST digit classifiers trained and registered by mindtrace"
                    )
            version = self.client.create_model_version(name, source, run_id=run_id, tags=tags or {})
        return self.get_version(name, version.version)

    def delete_version(self, name: str | None, version: str) -> None:
        """Remove a version; used to undo a registration whose later steps failed."""
        name = self.model_name(name)
        with _mlflow_errors(f"model {name!r} has no version {version}"):
            self.client.delete_model_version(name, version)

    def set_version_tags(self, name: str | None, version: str, tags: dict[str, str]) -> None:
        name = self.model_name(name)
        with _mlflow_errors(f"model {name!r} has no version {version}"):
            for key, value in tags.items():
                self.client.set_model_version_tag(name, version, key, value)

    def set_alias(
        self, name: str | None, alias: str, version: str | int, reason: str = "", actor: str | None = None
    ) -> AliasEvent:
        """Point ``alias`` at ``version`` (promotion) and log the move; a no-op if it already points there."""
        name = self.model_name(name)
        _check_alias(alias)
        target = self.get_version(name, str(version)).version  # a clear error for an unknown version
        previous = _aliases(self._registered(name)).get(alias)
        event = AliasEvent(
            alias=alias, version=target, previous=previous, action="set", reason=reason, actor=_actor(actor),
            at=datetime.now(timezone.utc),
        )  # fmt: skip
        if previous == target:
            return event
        with _mlflow_errors(f"model {name!r} has no version {target}"):
            self.client.set_registered_model_alias(name, alias, target)
        self._log(name, event)
        return event

    def remove_alias(
        self, name: str | None, alias: str, reason: str = "", actor: str | None = None
    ) -> AliasEvent:
        """Unset ``alias``, logging the move so that a rollback can restore it."""
        name = self.model_name(name)
        previous = _aliases(self._registered(name)).get(alias)
        if previous is None:
            raise NotFoundError(f"model {name!r} has no alias {alias!r}")
        with _mlflow_errors(f"model {name!r} has no alias {alias!r}"):
            self.client.delete_registered_model_alias(name, alias)
        event = AliasEvent(
            alias=alias, version=None, previous=previous, action="remove", reason=reason, actor=_actor(actor),
            at=datetime.now(timezone.utc),
        )  # fmt: skip
        self._log(name, event)
        return event

    def rollback(
        self, name: str | None = None, alias: str = "champion", reason: str = "", actor: str | None = None
    ) -> AliasEvent:
        """Move ``alias`` back to the version it held before its last move.

        The alias log is replayed as a stack: each move pushes the version it replaced, each rollback pops.
        So promote 2, promote 3, rollback, rollback gives 3, then 2, then 1 if 1 was champion before 2.
        """
        name = self.model_name(name)
        stack: list[str | None] = []
        for event in self.alias_history(name, alias):
            if event.action == "rollback":
                if stack:
                    stack.pop()
            else:
                stack.append(event.previous)
        if not stack or stack[-1] is None:
            raise RegistryError(f"alias {alias!r} of {name!r} has no earlier version to roll back to")
        target = stack[-1]
        self.get_version(name, target)  # it may have been deleted since
        current = _aliases(self._registered(name)).get(alias)
        with _mlflow_errors(f"model {name!r} has no version {target}"):
            self.client.set_registered_model_alias(name, alias, target)
        event = AliasEvent(
            alias=alias, version=target, previous=current, action="rollback", reason=reason,
            actor=_actor(actor), at=datetime.now(timezone.utc),
        )  # fmt: skip
        self._log(name, event)
        return event

    # --- internals ------------------------------------------------------------------------------------------

    def model_name(self, name: str | None) -> str:
        """``name``, or the configured default when None; refuses names that would break a registry query."""
        name = ifnone(name, self.default_name)
        if not name or "'" in name or '"' in name or "\\" in name:
            raise InvalidQueryError(f"invalid model name {name!r}")
        return name

    def _registered(self, name: str):
        with _mlflow_errors(f"no registered model named {name!r}; {self._model_names()}"):
            return self.client.get_registered_model(name)

    def _model_names(self) -> str:
        try:
            names = [m.name for m in self.client.search_registered_models(max_results=20)]
        except MlflowException:
            return "the registry could not list its models"
        return f"registered models: {', '.join(names)}" if names else "no model is registered yet"

    def _known(self, name: str, model) -> str:
        versions = [str(v.version) for v in self._all_versions(name)]
        aliases = ", ".join(f"{a}={v}" for a, v in sorted(_aliases(model).items())) or "none"
        return f"versions: {', '.join(reversed(versions)) or 'none'}; aliases: {aliases}"

    def _all_versions(self, name: str) -> list[ModelVersion]:
        """All versions of ``name``, newest first."""
        with _mlflow_errors(f"no registered model named {name!r}"):
            versions = list(
                self._pages(
                    lambda token: self.client.search_model_versions(
                        f"name='{name}'", max_results=_PAGE, page_token=token
                    )
                )
            )
        return sorted(versions, key=lambda v: int(v.version), reverse=True)

    @staticmethod
    def _pages(fetch: Callable[[str | None], Any]) -> Iterator[Any]:
        token = None
        while True:
            page = fetch(token)
            yield from page
            token = page.token
            if not token:
                return

    def _info(self, version: ModelVersion, aliases: list[str]) -> VersionInfo:
        run = None
        if version.run_id:
            with contextlib.suppress(MlflowException):  # the run may have been deleted; the version stays
                run = self.client.get_run(version.run_id)
        artifacts = {"model": version.source}
        if run is not None:
            root = run.info.artifact_uri.rstrip("/")
            artifacts["run"] = root
            artifacts.update(
                {
                    key[len(ARTIFACT_TAG_PREFIX) :]: f"{root}/{path}"
                    for key, path in run.data.tags.items()
                    if key.startswith(ARTIFACT_TAG_PREFIX)
                }
            )
        return VersionInfo(
            name=version.name,
            version=str(version.version),
            aliases=sorted(aliases),
            status=str(version.status),
            description=version.description or "",
            created_at=_when(version.creation_timestamp),
            updated_at=_when(version.last_updated_timestamp),
            tags=dict(version.tags or {}),
            run_id=version.run_id,
            run_status=run.info.status if run else None,
            run_started_at=_when(run.info.start_time) if run else None,
            run_ended_at=_when(run.info.end_time) if run else None,
            experiment_id=run.info.experiment_id if run else None,
            params=dict(run.data.params) if run else {},
            metrics=dict(run.data.metrics) if run else {},
            run_tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.log")}
            if run
            else {},
            artifacts=artifacts,
        )

    def _log(self, name: str, event: AliasEvent) -> None:
        tags = self._registered(name).tags or {}
        numbers = [int(k[len(ALIAS_LOG_PREFIX) :]) for k in tags if k.startswith(ALIAS_LOG_PREFIX)]
        key = f"{ALIAS_LOG_PREFIX}{max(numbers, default=0) + 1:06d}"
        with _mlflow_errors(f"no registered model named {name!r}"):
            self.client.set_registered_model_tag(name, key, event.model_dump_json())


# --- filters and ordering ----------------------------------------------------------------------------------

_CONDITION = re.compile(r"^\s*(?P<key>[A-Za-z_][\w.\-]*)\s*(?P<op>>=|<=|!=|==|=|>|<)\s*(?P<value>.*?)\s*$")
_FIELDS = ("version", "alias", "status", "run_id", "created_at", "updated_at")
_PREFIXES = ("metrics.", "params.", "tags.", "run_tags.")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


def _check_key(key: str) -> str:
    if key in _FIELDS or (key.startswith(_PREFIXES) and key.split(".", 1)[1]):
        return key
    raise InvalidQueryError(
        f"unknown key {key!r}: use one of {', '.join(_FIELDS)}, or metrics.NAME, params.NAME, tags.NAME, "
        "run_tags.NAME"
    )


def _field(info: VersionInfo, key: str) -> Any:
    if key == "alias":
        return info.aliases
    if key in _FIELDS:
        value = getattr(info, key)
        return value.isoformat() if isinstance(value, datetime) else value
    prefix, rest = key.split(".", 1)
    return getattr(info, prefix).get(rest)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _sort_key(value: Any) -> tuple[int, Any]:
    number = _number(value)
    return (0, number) if number is not None else (1, str(value))


def _parse_condition(text: str) -> Callable[[VersionInfo], bool]:
    match = _CONDITION.match(text)
    if not match:
        raise InvalidQueryError(
            f"cannot read the filter {text!r}: write KEY OP VALUE, e.g. metrics.test_acc>=0.98"
        )
    key, op, wanted = _check_key(match["key"]), _OPS[match["op"]], match["value"].strip("'\"")

    def condition(info: VersionInfo) -> bool:
        value = _field(info, key)
        if key == "alias":  # a version may carry several aliases
            return op(wanted in value, True) if match["op"] in ("=", "==", "!=") else False
        if value is None:
            return False
        a, b = _number(value), _number(wanted)
        return op(a, b) if a is not None and b is not None else op(str(value), wanted)

    return condition


def _parse_order(text: str | None) -> tuple[str, bool]:
    if not text:
        return "version", True
    parts = text.split()
    direction = parts[1].lower() if len(parts) == 2 else "asc"
    if len(parts) > 2 or direction not in ("asc", "desc"):
        raise InvalidQueryError(f"cannot read the ordering {text!r}: write KEY [asc|desc]")
    return _check_key(parts[0]), direction == "desc"


def _aliases(model) -> dict[str, str]:
    """A registered model's aliases; MLflow gives versions as int or str depending on the store."""
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def _aliases_by_version(aliases: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        out.setdefault(version, []).append(alias)
    return out


_ALIAS = re.compile(r"^[A-Za-z_][\w\-]{0,254}$")


def _check_alias(alias: str) -> None:
    # MLflow reserves "latest" and version-like names ("v3"); an all-digit alias would read as a version here.
    if not _ALIAS.match(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise InvalidQueryError(
            f"invalid alias {alias!r}: use letters, digits, '_' or '-', starting with a letter; not 'latest' "
            "or v<number>"
        )


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in some containers
        return "unknown"
