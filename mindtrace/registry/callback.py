"""A Lightning callback that records a run in MLflow, registers the model and runs the promotion gate."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

import mindtrace
from mindtrace.config import Config
from mindtrace.evaluate import Evaluation, confusion_matrix_png, evaluate
from mindtrace.faults import failpoint
from mindtrace.models.mlp import MLP
from mindtrace.models.net import MLPNet, load_checkpoint
from mindtrace.monitoring.drift import build_reference
from mindtrace.registry.artifacts import (
    CHECKPOINT_PATH,
    DATA_PATH,
    EVALUATION_PATH,
    MODEL_PATH,
    log_reference,
    save_mlflow_model,
)
from mindtrace.registry.gate import decision_tags, review
from mindtrace.registry.provenance import git_state, package_versions
from mindtrace.registry.query import ARTIFACT_TAG_PREFIX, DATA_DIGEST_TAG, Registry, RegistryError
from mindtrace.registry.schemas import GateDecision, VersionInfo
from mindtrace.registry.tracking import get_or_create_experiment
from mindtrace.train_config import PromotionPolicy, TrainConfig
from mindtrace.utils import epoch_metrics, flatten_dict, ifnone

log = logging.getLogger(__name__)
_MAX_PARAM = 6000  # MLflow's limit on a parameter value's length


class MlflowLightningCallback(pl.Callback):
    """Record a Lightning run in MLflow, register the trained MLP and decide whether it becomes champion.

    Args:
        params: your own parameters, logged as ``user.*`` beside the model's and the data's.
        experiment_name: default ``[MLFLOW] EXPERIMENT_NAME``.
        tracking_uri: default ``[MLFLOW] TRACKING_URI``, the embedded SQLite store under ``MINDTRACE_HOME``.
        run_name: a readable name for the run.
        config: settings; default ``Config()``.
        train_config: the run's ``TrainConfig``, logged flattened as ``train.*``.
        registered_model: the registered model to add a version to; default ``[MLFLOW] REGISTERED_MODEL``.
        register: False records the run only.
        promotion: the gate's policy; default ``[PROMOTION]``.

    When ``fit`` starts: parameters, package versions, the git commit and the dataset fingerprint. Each epoch:
    its metrics. When ``fit`` ends, for the best checkpoint (or the final weights without one): test accuracy,
    loss, macro F1 and per-class accuracy, a confusion-matrix picture, the model with its signature and an
    input example, the checkpoint, and the drift reference (its probabilities on the MNIST test set, which
    the service compares live inputs with); then a new registered version, marked ``challenger``, goes
    through the promotion gate. A run that raises is marked FAILED and registers nothing.

    After ``fit``: ``run_id``, ``version`` (the registered ``VersionInfo``), ``decision`` (the gate's
    ``GateDecision``) and ``evaluation`` hold the results.

    >>> cb = MlflowLightningCallback(params={"param1": "value1"}, experiment_name="my_experiment")
    >>> trainer = pl.Trainer(callbacks=[cb], max_epochs=10)   # doctest: +SKIP
    >>> trainer.fit(MLP(), MNIST())                           # doctest: +SKIP
    >>> cb.version.version, cb.decision.promoted             # doctest: +SKIP
    ('1', True)
    """

    def __init__(
        self,
        params: dict[str, Any] | None = None,
        experiment_name: str | None = None,
        tracking_uri: str | None = None,
        run_name: str | None = None,
        config: Config | None = None,
        *,
        train_config: TrainConfig | None = None,
        registered_model: str | None = None,
        register: bool = True,
        promotion: PromotionPolicy | None = None,
    ):
        self.config = ifnone(config, Config())
        self.params = dict(ifnone(params, {}))
        self.experiment_name = ifnone(experiment_name, self.config["MLFLOW"]["EXPERIMENT_NAME"])
        self.tracking_uri = tracking_uri
        self.run_name = run_name
        self.train_config = train_config
        self.registered_model = ifnone(registered_model, self.config["MLFLOW"]["REGISTERED_MODEL"])
        self.register = register
        self.promotion = ifnone(promotion, PromotionPolicy.from_config(self.config))
        self.run_id: str | None = None
        self.version: VersionInfo | None = None
        self.decision: GateDecision | None = None
        self.evaluation: Evaluation | None = None
        self._registry: Registry | None = None
        self._started = 0.0

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(self.tracking_uri, self.config)
        return self._registry

    @property
    def client(self):
        return self.registry.client

    # --- Lightning hooks ------------------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.time()
        self.version = self.decision = self.evaluation = None
        experiment_id = get_or_create_experiment(self.client, self.experiment_name, self.config)
        tags = {f"versions.{k}": v for k, v in package_versions().items()}
        git = git_state(Path(mindtrace.__file__).parent, Path.cwd())
        if git:
            tags["mlflow.source.git.commit"] = git["commit"]  # MLflow's own tag: the UI links it
            tags["mindtrace.git.dirty"] = git["dirty"]
        tags.update({"mindtrace.model_class": type(pl_module).__name__, "mindtrace.started_at": _now()})
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id

        datamodule = trainer.datamodule
        params = flatten_dict(
            {
                "user": self.params,
                "train": self.train_config.model_dump() if self.train_config else {},
                "model": dict(pl_module.hparams),
                "data": dict(datamodule.hparams) if datamodule is not None else {},
                "trainer": {"max_epochs": trainer.max_epochs},
            }
        )
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:_MAX_PARAM]) for k, v in params.items()])
        if datamodule is not None and hasattr(datamodule, "fingerprint"):
            self._log_dataset(datamodule)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation has already run inside this epoch, so its metrics are here too.
        now = int(time.time() * 1000)
        metrics = [
            Metric(name, value, now, trainer.current_epoch)
            for name, value in epoch_metrics(trainer.callback_metrics).items()
            if not name.startswith("test_")
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run_id is None or trainer.interrupted:
            return
        test_batches = _test_batches(trainer.datamodule)
        if isinstance(pl_module, MLP) and test_batches is not None:
            self._finish_model(trainer, pl_module, test_batches)
        else:
            log.warning("not registering: only a mindtrace MLP trained on a datamodule with a test set is")
        self._log_end("FINISHED")

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.run_id is not None:
            self.client.set_tag(
                self.run_id, "mindtrace.error", f"{type(exception).__name__}: {exception}"[:5000]
            )
            self._log_end("FAILED")

    # --- the end of a run -----------------------------------------------------------------------------------

    def _finish_model(self, trainer: pl.Trainer, pl_module: MLP, test_batches: list) -> None:
        net, weights_from = _best_net(trainer, pl_module)
        self.evaluation = evaluate(net, test_batches)
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, v, now, 0) for k, v in self.evaluation.metrics().items()]
        )
        artifacts = {"model": MODEL_PATH}
        with tempfile.TemporaryDirectory(prefix="mindtrace-run-") as tmp:
            tmp = Path(tmp)
            evaluation = tmp / EVALUATION_PATH
            evaluation.mkdir()
            (evaluation / "confusion_matrix.png").write_bytes(confusion_matrix_png(self.evaluation))
            (evaluation / "evaluation.json").write_text(self.evaluation.model_dump_json(indent=2))
            self.client.log_artifacts(self.run_id, str(evaluation), EVALUATION_PATH)
            artifacts["confusion_matrix"] = f"{EVALUATION_PATH}/confusion_matrix.png"

            example = test_batches[0][0][:2]  # two real digits: an example of one would fix the batch size
            save_mlflow_model(net, tmp / MODEL_PATH, example)
            self.client.log_artifacts(self.run_id, str(tmp / MODEL_PATH), MODEL_PATH)
        checkpoint = _best_checkpoint(trainer)
        if checkpoint is not None:
            self.client.log_artifact(self.run_id, checkpoint, CHECKPOINT_PATH)
            artifacts["checkpoint"] = f"{CHECKPOINT_PATH}/{Path(checkpoint).name}"
        log_reference(self.client, self.run_id, build_reference(net, self.config))
        tags = {f"{ARTIFACT_TAG_PREFIX}{key}": path for key, path in artifacts.items()}
        self._set_tags({**tags, "mindtrace.weights_from": weights_from})
        if self.register:
            self._register_and_gate(test_batches)

    def _register_and_gate(self, test_batches: list) -> None:
        run = self.client.get_run(self.run_id)
        tags = {
            "mindtrace.experiment": self.experiment_name,
            "mindtrace.version": mindtrace.__version__,
            "test_acc": f"{self.evaluation.accuracy:.4f}",
            "test_macro_f1": f"{self.evaluation.macro_f1:.4f}",
        }
        for key in (DATA_DIGEST_TAG, "mlflow.source.git.commit"):
            if key in run.data.tags:
                tags[key] = run.data.tags[key]
        version = self.registry.register(
            self.run_id, f"{run.info.artifact_uri}/{MODEL_PATH}", self.registered_model, tags
        )
        failpoint("registration")
        try:
            self.decision = review(
                self.registry, version.version, test_batches, self.promotion, self.registered_model
            )
        except BaseException:
            # Registration is all or nothing: a version whose gate failed would be half-registered.
            try:
                self.registry.delete_version(self.registered_model, version.version)
            except RegistryError as exc:
                log.error("could not remove version %s after the gate failed: %s", version.version, exc)
            raise
        self.version = self.registry.get_version(self.registered_model, version.version)
        self._set_tags({"mindtrace.registered_version": version.version, **decision_tags(self.decision)})

    def _log_dataset(self, datamodule: pl.LightningDataModule) -> None:
        fingerprint = datamodule.fingerprint()
        identity = {k: v for k, v in fingerprint.items() if k != "sources"}  # same data, however fetched
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.client.set_tag(self.run_id, DATA_DIGEST_TAG, digest)
        sources = sorted(set(fingerprint.get("sources", {}).values()))
        self.client.set_tag(self.run_id, "mindtrace.data.sources", ", ".join(sources))
        path = f"{DATA_PATH}/fingerprint.json"
        self.client.log_text(self.run_id, json.dumps(fingerprint, indent=2, sort_keys=True), path)
        self.client.set_tag(self.run_id, f"{ARTIFACT_TAG_PREFIX}fingerprint", path)
        dataset = Dataset(
            name=type(datamodule).__name__.lower(),
            digest=digest[:36],
            source_type="local",
            source=str(getattr(datamodule, "data_dir", "")),
        )
        self.client.log_inputs(
            self.run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])]
        )

    def _set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def _log_end(self, status: str) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric("duration_seconds", time.time() - self._started, now, 0)]
        )
        self.client.set_tag(self.run_id, "mindtrace.ended_at", _now())
        self.client.set_terminated(self.run_id, status)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _test_batches(datamodule: pl.LightningDataModule | None) -> list | None:
    """The datamodule's test set as a list of batches, or None when it has none."""
    if datamodule is None:
        return None
    try:
        datamodule.setup("test")
        return list(datamodule.test_dataloader())
    except (NotImplementedError, AttributeError):  # Lightning's default test_dataloader raises the former
        return None


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    checkpoint = trainer.checkpoint_callback
    path = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
    return path if path and Path(path).is_file() else None


def _best_net(trainer: pl.Trainer, pl_module: MLP) -> tuple[MLPNet, str]:
    """The network with the best checkpoint's weights (the final weights without a checkpoint), and which."""
    path = _best_checkpoint(trainer)
    if path is None:
        return pl_module.net, "final weights"
    return load_checkpoint(path, pl_module.net.dim), f"best checkpoint {Path(path).name}"
