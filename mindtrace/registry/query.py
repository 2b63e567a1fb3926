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
import functools
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from mindtrace.config import Config
from mindtrace.registry.aliases import AliasMoves, aliases_by_version, is_log_tag, model_aliases, read_log
from mindtrace.registry.errors import InvalidQueryError, NotFoundError, RegistryError, error_class
from mindtrace.registry.filters import order, parse_condition, parse_order
from mindtrace.registry.mlflow_errors import mlflow_errors
from mindtrace.registry.names import check_model_name
from mindtrace.registry.schemas import AliasEvent, Comparison, MetricDelta, ModelSummary, VersionInfo
from mindtrace.registry.tracking import make_client
from mindtrace.registry.tracking import tracking_uri as configured_uri
from mindtrace.utils import ifnone

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from mindtrace.models import MLPNet

# callback.py and gate.py import the tags and RegistryError from here.
# MLflow's stores keep version numbers as 64-bit integers.
MAX_VERSION = 2**63 - 1
__all__ = ["ARTIFACT_TAG_PREFIX", "DATA_DIGEST_TAG", "Registry", "RegistryError"]

ARTIFACT_TAG_PREFIX = "mindtrace.artifact."  # run tags naming artifacts: mindtrace.artifact.checkpoint = path
DATA_DIGEST_TAG = "mindtrace.data.digest"
_PAGE = 1000


def _when(millis: int | None) -> datetime | None:
    return None if millis is None else datetime.fromtimestamp(millis / 1000, tz=timezone.utc)


class Registry(AliasMoves):
    """Query and change the model registry.

    Args:
        tracking_uri: default ``[MLFLOW] TRACKING_URI`` (the embedded SQLite store under ``MINDTRACE_HOME``).
        config: settings; default ``Config()``.

    Every ``name`` argument defaults to ``[MLFLOW] REGISTERED_MODEL`` (``mnist-mlp``). Methods raise
    :class:`NotFoundError`, :class:`InvalidQueryError` or :class:`RegistryUnavailableError` with a readable
    message. The alias moves (``set_alias``, ``remove_alias``, ``rollback``) are inherited from
    :class:`~mindtrace.registry.aliases.AliasMoves`; ``list_versions``' filters are
    :mod:`mindtrace.registry.filters`.
    """

    def __init__(self, tracking_uri: str | None = None, config: Config | None = None):
        self.config = ifnone(config, Config())
        self.tracking_uri = tracking_uri or configured_uri(self.config)  # which creates the default's folder
        self.default_name = self.config["MLFLOW"]["REGISTERED_MODEL"]

    @functools.cached_property
    def client(self) -> MlflowClient:
        """MLflow's client, made on first use: for the embedded store that opens the database, which may be
        locked or gone right now (a :class:`RegistryUnavailableError`, and the next call tries again)."""
        with mlflow_errors("no registry"):
            return make_client(self.tracking_uri)

    # --- reading --------------------------------------------------------------------------------------------

    def list_models(self) -> list[ModelSummary]:
        """Every registered model with its aliases, newest versions and version count."""
        with mlflow_errors("no registered models"):
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
                    aliases=model_aliases(m),
                    latest_versions=[str(v.version) for v in versions[:5]],
                    num_versions=len(versions),
                    tags={k: v for k, v in (m.tags or {}).items() if not is_log_tag(k)},
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
                The language is :mod:`mindtrace.registry.filters`.
            order_by: ``KEY [asc|desc]`` with the same keys; default ``version desc``.
            limit: at most this many, after filtering and ordering.

        >>> Registry().list_versions(where=["metrics.test_acc >= 0.98", "alias = champion"])  # doctest: +SKIP
        """
        name = self.model_name(name)
        conditions = [parse_condition(w) for w in where]
        key, descending = parse_order(order_by)
        if limit is not None and limit < 0:
            raise InvalidQueryError(f"limit must be 0 or more; got {limit}")
        by_version = aliases_by_version(model_aliases(self._registered(name)))
        infos = [self._info(v, by_version.get(str(v.version), [])) for v in self._all_versions(name)]
        return order([i for i in infos if all(c(i) for c in conditions)], key, descending)[:limit]

    def get_version(self, name: str | None = None, ref: str | int = "champion") -> VersionInfo:
        """One version by number (``"3"`` or ``3``) or by alias (``"champion"``), with all its metadata."""
        name = self.model_name(name)
        ref = str(ref).strip()
        model = self._registered(name)
        try:
            if ref.isascii() and ref.isdigit():
                if (
                    int(ref) > MAX_VERSION
                ):  # no store holds it, and SQLite would fail on it rather than say so
                    raise NotFoundError(f"model {name!r} has no version {ref}")
                with mlflow_errors(f"model {name!r} has no version {ref}"):
                    version = self.client.get_model_version(name, ref)
            else:
                if ref not in model_aliases(model):
                    raise NotFoundError(f"model {name!r} has no alias {ref!r}")
                # MLflow reports an unknown alias as INVALID_PARAMETER_VALUE; here it was just removed.
                missing = {"INVALID_PARAMETER_VALUE": NotFoundError}
                with mlflow_errors(f"model {name!r} has no alias {ref!r}", missing):
                    version = self.client.get_model_version_by_alias(name, ref)
        except NotFoundError as exc:
            raise NotFoundError(f"{exc}; {self._known(name, model)}") from None
        return self._info(version, aliases_by_version(model_aliases(model)).get(str(version.version), []))

    def alias_target(self, name: str | None = None, alias: str = "champion") -> str | None:
        """The version number ``alias`` points to, in one registry call; None when the alias is unset.

        Cheap enough to poll: the service asks it every few seconds to follow the champion.
        """
        return model_aliases(self._registered(self.model_name(name))).get(alias)

    def alias_and_tags(
        self, name: str | None = None, alias: str = "champion"
    ) -> tuple[str | None, dict[str, str]]:
        """Where ``alias`` points and the model's tags, in one registry call: what the service polls to
        follow the champion and a rollout (``mindtrace.rollout``)."""
        model = self._registered(self.model_name(name))
        return model_aliases(model).get(alias), dict(model.tags or {})

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
        events = read_log(self._registered(self.model_name(name)).tags)
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
        return self.download_artifact(info, "model", dst)

    def download_artifact(self, info: VersionInfo, key: str, dst: Path) -> Path:
        """Copy the artifact ``info.artifacts[key]`` (``model``, ``reference``...) into ``dst``; its path."""
        import mlflow.artifacts

        with mlflow_errors(f"the {key} files of version {info.version} of {info.name!r} are missing"):
            return Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=info.artifacts[key], dst_path=str(dst), tracking_uri=self.tracking_uri
                )
            )

    # --- changing -------------------------------------------------------------------------------------------

    def register(
        self, run_id: str, source: str, name: str | None = None, tags: dict[str, str] | None = None
    ) -> VersionInfo:
        """Register the model at ``source`` (an artifact URI of run ``run_id``) as a new version."""
        name = self.model_name(name)
        with mlflow_errors(f"run {run_id} not found"):
            try:
                self.client.get_registered_model(name)
            except MlflowException as exc:
                if error_class(exc.error_code) is not NotFoundError:
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
        with mlflow_errors(f"model {name!r} has no version {version}"):
            self.client.delete_model_version(name, version)

    def model_tags(self, name: str | None = None) -> dict[str, str]:
        """A registered model's tags (the alias log's entries included), in one registry call."""
        return dict(self._registered(self.model_name(name)).tags or {})

    def set_model_tag(self, name: str | None, key: str, value: str) -> None:
        """Set one tag on a registered model (a rollout's state: ``mindtrace.rollout``)."""
        name = self.model_name(name)
        with mlflow_errors(f"no registered model named {name!r}"):
            self.client.set_registered_model_tag(name, key, value)

    def set_version_tags(self, name: str | None, version: str, tags: dict[str, str]) -> None:
        """Set tags on a version (the gate's decision, the test accuracy), leaving its other tags alone.

        >>> Registry().set_version_tags(None, "3", {"reviewed": "yes"})   # doctest: +SKIP
        """
        name = self.model_name(name)
        with mlflow_errors(f"model {name!r} has no version {version}"):
            for key, value in tags.items():
                self.client.set_model_version_tag(name, version, key, value)

    # --- internals ------------------------------------------------------------------------------------------

    def model_name(self, name: str | None) -> str:
        """``name``, or the configured default when None; refuses names that would break a registry query.

        >>> Registry().model_name(None)   # doctest: +SKIP
        'mnist-mlp'
        """
        return check_model_name(ifnone(name, self.default_name))

    def _registered(self, name: str) -> RegisteredModel:
        try:
            with mlflow_errors(f"no registered model named {name!r}"):
                return self.client.get_registered_model(name)
        except NotFoundError as exc:  # list the models only then: alias_target polls this every few seconds
            raise NotFoundError(f"{exc}; {self._model_names()}") from None

    def _model_names(self) -> str:
        try:
            names = [m.name for m in self.client.search_registered_models(max_results=20)]
        except MlflowException:
            return "the registry could not list its models"
        return f"registered models: {', '.join(names)}" if names else "no model is registered yet"

    def _known(self, name: str, model: RegisteredModel) -> str:
        versions = [str(v.version) for v in self._all_versions(name)]
        aliases = ", ".join(f"{a}={v}" for a, v in sorted(model_aliases(model).items())) or "none"
        return f"versions: {', '.join(reversed(versions)) or 'none'}; aliases: {aliases}"

    def _all_versions(self, name: str) -> list[ModelVersion]:
        """All versions of ``name``, newest first."""
        with mlflow_errors(f"no registered model named {name!r}"):
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
