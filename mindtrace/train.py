"""One training path: a pydantic ``TrainConfig`` in, a trained MLP and its metrics out.

The CLI (``mindtrace train``), the Python API and ``POST /retrain`` all build a ``TrainConfig`` and call
``train``; ``train_and_register`` adds the MLflow record, the registration and the promotion gate, and is
what the CLI and the retraining jobs run.

>>> cfg = TrainConfig(epochs=1, num_train=2000, num_val=500)
>>> result = train(cfg)                     # doctest: +SKIP
>>> result.metrics["test_acc"] > 0.8        # doctest: +SKIP
True
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, RichProgressBar

from mindtrace.config import Config
from mindtrace.data import MNIST
from mindtrace.models.mlp import MLP
from mindtrace.models.net import load_checkpoint
from mindtrace.monitoring.store import feedback_digits
from mindtrace.train_config import PromotionPolicy, TrainConfig, TrainRequest
from mindtrace.utils import available_cores, epoch_metrics, ifnone


@dataclass
class TrainResult:
    """What ``train`` returns: the trained module (best checkpoint loaded) and its figures."""

    model: MLP
    metrics: dict[str, float]
    datamodule: MNIST
    config: TrainConfig
    best_checkpoint: str | None = None
    fetch_seconds: float = 0.0


def train(
    config: TrainConfig | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    settings: Config | None = None,
    progress: bool = True,
) -> TrainResult:
    """Seed everything, fetch MNIST if needed, fit the MLP, test the best checkpoint, return the metrics.

    Args:
        config: the run's knobs; default ``TrainConfig()``.
        callbacks: extra Lightning callbacks, e.g. ``MlflowLightningCallback`` to record the run.
        settings: folders and data sources; default ``Config()``.
        progress: show Lightning's progress bar and the fetch progress.

    ``metrics`` holds ``test_acc``, ``test_loss``, ``val_acc``, ``val_loss``, ``train_loss``, ``epochs``,
    ``fit_seconds`` (fit wall time, data fetch excluded) and ``images_per_second`` (training throughput).
    """
    config = ifnone(config, TrainConfig())
    settings = ifnone(settings, Config())
    pl.seed_everything(config.seed, workers=True, verbose=False)
    torch.set_num_threads(available_cores())
    dm = MNIST(
        batch_size=config.batch_size,
        num_train=config.num_train,
        num_val=config.num_val,
        seed=config.seed,
        config=settings,
        progress=progress,
        extra=feedback_digits(settings) if config.with_feedback else None,
    )
    t0 = time.perf_counter()
    dm.prepare_data()
    fetch_seconds = time.perf_counter() - t0

    model = MLP(
        dim=config.dim,
        dropout=config.dropout,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    checkpoint = ModelCheckpoint(
        dirpath=_new_folder(settings["DIR_PATHS"].getpath("CHECKPOINTS")),
        monitor="val_acc",
        mode="max",
        filename="epoch{epoch}-val_acc{val_acc:.4f}",
        auto_insert_metric_name=False,
    )
    trainer = pl.Trainer(
        max_epochs=config.epochs,
        accelerator="cpu",
        deterministic=True,
        logger=False,
        callbacks=[checkpoint, *callbacks, *([RichProgressBar()] if progress else [])],
        enable_progress_bar=progress,
        enable_model_summary=progress,
        num_sanity_val_steps=0,
    )
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    fit_seconds = time.perf_counter() - t0
    metrics = epoch_metrics(trainer.callback_metrics)
    ckpt = checkpoint.best_model_path or None
    if ckpt:  # test, and return, the best weights rather than the last
        model.net.load_state_dict(load_checkpoint(ckpt, config.dim).state_dict())
    test_metrics = trainer.test(model, datamodule=dm, verbose=False)[0]

    metrics.update(epoch_metrics(test_metrics))
    metrics.update(
        epochs=float(trainer.current_epoch),
        fit_seconds=fit_seconds,
        images_per_second=config.num_train * trainer.current_epoch / fit_seconds,
    )
    return TrainResult(
        model=model,
        metrics=metrics,
        datamodule=dm,
        config=config,
        best_checkpoint=ckpt,
        fetch_seconds=fetch_seconds,
    )


def train_and_register(
    request: TrainRequest,
    *,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    model: str | None = None,
    register: bool = True,
    track: bool = True,
    callbacks: Sequence[Callback] = (),
    settings: Config | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, record the run in MLflow, register the new version and let the promotion gate decide.

    Returns a flat summary: test metrics, ``mlflow_run_id``, ``registered_model``, ``registered_version``,
    ``aliases``, ``promoted`` and ``gate_reason`` (the last five only when a version was registered), and
    ``rollout`` when the gate started a staged rollout rather than promoting (``PromotionPolicy.rollout``).

    >>> summary = train_and_register(TrainRequest(epochs=1, promotion={"policy": "never"}))  # doctest: +SKIP
    >>> summary["promoted"]                                                                  # doctest: +SKIP
    False
    """
    from mindtrace.registry import MlflowLightningCallback

    settings = ifnone(settings, Config())
    config = request.train_config()
    tracker = None
    if track:
        tracker = MlflowLightningCallback(
            experiment_name=experiment,
            tracking_uri=tracking_uri,
            config=settings,
            train_config=config,
            registered_model=model,
            register=register,
            promotion=request.promotion or PromotionPolicy.from_config(settings),
        )
    result = train(
        config, callbacks=[*callbacks, *([tracker] if tracker else [])], settings=settings, progress=progress
    )
    summary: dict[str, Any] = {**result.metrics, "best_checkpoint": result.best_checkpoint}
    if tracker is None:
        return summary
    summary["mlflow_run_id"] = tracker.run_id
    if tracker.evaluation is not None:  # the registered figures, so that every report shows one number
        metrics = tracker.evaluation.metrics()
        summary.update({k: v for k, v in metrics.items() if not k.startswith("test_acc_class_")})
    if tracker.version is not None:
        summary["registered_model"] = tracker.version.name
        summary["registered_version"] = tracker.version.version
        summary["aliases"] = ", ".join(tracker.version.aliases)
    if tracker.decision is not None:
        summary["promoted"] = tracker.decision.promoted
        summary["gate_reason"] = tracker.decision.reason
        if tracker.decision.rollout:
            summary["rollout"] = tracker.decision.rollout
    return summary


def _new_folder(parent: Path) -> Path:
    """A fresh folder named by the time, unique even for runs started in the same second."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=parent, prefix=time.strftime("%Y%m%d-%H%M%S-")))
