"""One training path: a pydantic ``TrainConfig`` in, a trained MLP and its metrics out.

The CLI (``mindtrace train``), the Python API and, later, ``POST /retrain`` all build a ``TrainConfig`` and
call ``train``.

>>> cfg = TrainConfig(epochs=1, num_train=2000, num_val=500)
>>> result = train(cfg)                     # doctest: +SKIP
>>> result.metrics["test_acc"] > 0.8        # doctest: +SKIP
True
"""

from __future__ import annotations

import configparser
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, RichProgressBar

from mindtrace.config import Config
from mindtrace.data import MNIST
from mindtrace.data.datamodule import TRAIN_SIZE
from mindtrace.models import MLP
from mindtrace.models.mlp import DEFAULT_DIM, DEFAULT_DROPOUT, DEFAULT_LEARNING_RATE, DEFAULT_WEIGHT_DECAY
from mindtrace.utils import available_cores, ifnone


class TrainConfig(BaseModel):
    """Every knob of a training run, validated; unknown keys are refused.

    >>> TrainConfig(epochs=2, hidden_dims="128, 64").hidden_dims
    [128, 64]
    """

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1, le=1000, description="passes over the training split")
    learning_rate: float = Field(
        DEFAULT_LEARNING_RATE, gt=0, le=1, description="peak learning rate of the one-cycle schedule"
    )
    batch_size: int = Field(256, ge=1, le=8192, description="images per training step")
    hidden_dims: list[int] = Field(
        list(DEFAULT_DIM[1:-1]), max_length=8, description="sizes of the hidden layers"
    )
    dropout: float = Field(DEFAULT_DROPOUT, ge=0, lt=1, description="dropout after each hidden layer")
    weight_decay: float = Field(DEFAULT_WEIGHT_DECAY, ge=0, le=1, description="AdamW weight decay")
    seed: int = Field(42, ge=0, description="seeds the split, the initial weights and the shuffling")
    num_train: int = Field(55_000, ge=1, le=TRAIN_SIZE, description="training images")
    num_val: int = Field(5_000, ge=1, le=TRAIN_SIZE, description="validation images")

    @field_validator("hidden_dims", mode="before")
    @classmethod
    def _split_dims(cls, value: Any) -> Any:
        # INI files, query strings and the CLI give "512,256".
        if isinstance(value, str):
            return [v.strip() for v in value.replace(" ", ",").split(",") if v.strip()]
        return value

    @field_validator("hidden_dims")
    @classmethod
    def _positive_dims(cls, value: list[int]) -> list[int]:
        if any(d < 1 or d > 8192 for d in value):
            raise ValueError("each hidden layer needs between 1 and 8192 units")
        return value

    @model_validator(mode="after")
    def _split_fits(self) -> TrainConfig:
        if self.num_train + self.num_val > TRAIN_SIZE:
            raise ValueError(f"num_train + num_val must be at most {TRAIN_SIZE}")
        return self

    @property
    def dim(self) -> list[int]:
        """Layer sizes of the MLP, input and output included."""
        return [784, *self.hidden_dims, 10]

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a config from a JSON, YAML or INI file (INI: the ``[train]`` section).

        >>> import tempfile; p = Path(tempfile.mkdtemp()) / "c.ini"
        >>> _ = p.write_text("[train]\\nepochs = 3\\n")
        >>> TrainConfig.from_file(p).epochs
        3
        """
        path = Path(path)
        return cls.from_text(path.read_text(), path.suffix)

    @classmethod
    def from_text(cls, text: str, suffix: str) -> TrainConfig:
        """Parse config text given the file suffix (``.json``, ``.yaml``/``.yml`` or ``.ini``/``.cfg``)."""
        suffix = suffix.lower()
        if suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif suffix in (".ini", ".cfg"):
            parser = configparser.ConfigParser()
            parser.read_string(text)
            if not parser.has_section("train"):
                raise ValueError("an INI training config needs a [train] section")
            data = dict(parser["train"])
        else:
            raise ValueError(f"unsupported config file type {suffix!r}: use .json, .yaml, .yml or .ini")
        if not isinstance(data, dict):
            raise ValueError("a training config must be a mapping of parameter names to values")
        return cls.model_validate(data)


@dataclass
class TrainResult:
    """What ``train`` returns: the trained module (best checkpoint loaded) and its figures."""

    model: MLP
    metrics: dict[str, float]
    datamodule: MNIST
    config: TrainConfig
    best_checkpoint: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def train(
    config: TrainConfig | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    datamodule: MNIST | None = None,
    settings: Config | None = None,
    progress: bool = True,
) -> TrainResult:
    """Seed everything, fetch MNIST if needed, fit the MLP, test the best checkpoint, return the metrics.

    ``metrics`` holds ``test_acc``, ``test_loss``, ``val_acc``, ``val_loss``, ``train_loss``, ``epochs``,
    ``fit_seconds`` (fit wall time, data fetch excluded) and ``images_per_second`` (training throughput).
    """
    config = ifnone(config, TrainConfig())
    settings = ifnone(settings, Config())
    pl.seed_everything(config.seed, workers=True, verbose=False)
    torch.set_num_threads(available_cores())
    dm = ifnone(
        datamodule,
        MNIST(
            batch_size=config.batch_size,
            num_train=config.num_train,
            num_val=config.num_val,
            seed=config.seed,
            config=settings,
            progress=progress,
        ),
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
        dirpath=settings["DIR_PATHS"].getpath("CHECKPOINTS") / time.strftime("%Y%m%d-%H%M%S"),
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
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if not k.endswith("_step")}
    ckpt = checkpoint.best_model_path or None
    # The checkpoint was written by this very run a moment ago, so loading its full pickle is safe.
    test_metrics = trainer.test(model, datamodule=dm, ckpt_path=ckpt, verbose=False, weights_only=False)[0]

    metrics = {k.removesuffix("_epoch"): v for k, v in fit_metrics.items()}
    metrics.update({k: float(v) for k, v in test_metrics.items()})
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
        timings={"fetch_seconds": fetch_seconds, "fit_seconds": fit_seconds},
    )
