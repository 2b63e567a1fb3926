"""A Lightning callback that records a training run in MLflow."""

from __future__ import annotations

import platform
from typing import Any

import pytorch_lightning as pl
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis

import mindtrace
from mindtrace.config import Config
from mindtrace.registry.tracking import get_or_create_experiment, tracking_uri
from mindtrace.utils import epoch_metrics, flatten_dict, ifnone

_MAX_PARAM = 6000  # MLflow's limit on a parameter value's length


class MlflowLightningCallback(pl.Callback):
    """Record a Lightning run in MLflow: parameters, per-epoch metrics, test metrics, status.

    Args:
        params: your own parameters, logged beside the model's and the datamodule's hyperparameters.
        experiment_name: default ``Config()["MLFLOW"]["EXPERIMENT_NAME"]``.
        tracking_uri: default the embedded SQLite store under ``MINDTRACE_HOME``.
        run_name: a readable name for the run.

    The run is FINISHED when ``fit`` ends and FAILED when it raises; a later ``trainer.test`` with the same
    callback adds its metrics to the same run. ``run_id`` holds the run's id once fitting has started.

    >>> cb = MlflowLightningCallback(params={"param1": "value1"}, experiment_name="my_experiment")
    >>> trainer = pl.Trainer(callbacks=[cb], max_epochs=10)   # doctest: +SKIP
    >>> trainer.fit(MLP(), MNIST())                           # doctest: +SKIP
    """

    def __init__(
        self,
        params: dict[str, Any] | None = None,
        experiment_name: str | None = None,
        tracking_uri: str | None = None,
        run_name: str | None = None,
        config: Config | None = None,
    ):
        self.config = ifnone(config, Config())
        self.params = dict(ifnone(params, {}))
        self.experiment_name = ifnone(experiment_name, self.config["MLFLOW"]["EXPERIMENT_NAME"])
        self.tracking_uri = tracking_uri
        self.run_name = run_name
        self.run_id: str | None = None
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(ifnone(self.tracking_uri, tracking_uri(self.config)))
        return self._client

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        experiment_id = get_or_create_experiment(self.client, self.experiment_name, self.config)
        tags = {
            "mindtrace.version": mindtrace.__version__,
            "python": platform.python_version(),
            "model.class": type(pl_module).__name__,
        }
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        datamodule = trainer.datamodule
        params = flatten_dict(
            {
                "user": self.params,
                "model": dict(pl_module.hparams),
                "data": dict(datamodule.hparams) if datamodule is not None else {},
                "trainer": {"max_epochs": trainer.max_epochs},
            }
        )
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:_MAX_PARAM]) for k, v in params.items()])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation has already run inside this epoch, so its metrics are here too.
        self._log_metrics(trainer, step=trainer.current_epoch)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run_id is not None:
            self._log_metrics(trainer, step=0, prefix="test_")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED")

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.run_id is not None:
            self.client.set_tag(
                self.run_id, "mindtrace.error", f"{type(exception).__name__}: {exception}"[:5000]
            )
            self.client.set_terminated(self.run_id, "FAILED")

    def _log_metrics(self, trainer: pl.Trainer, step: int, prefix: str = "") -> None:
        now = get_current_time_millis()
        metrics = [
            Metric(name, value, now, step)
            for name, value in epoch_metrics(trainer.callback_metrics).items()
            if name.startswith(prefix)
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
