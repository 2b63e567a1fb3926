"""The training config and the promotion policy: every knob of a run, validated, shared by the CLI, the
Python API and POST /retrain.

Kept free of torch and Lightning so that reading and checking a config is instant.

>>> TrainConfig(epochs=3).dim
[784, 512, 256, 10]
"""

from __future__ import annotations

import configparser
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from mindtrace.config import Config
from mindtrace.data.fetch import TRAIN_SIZE

# The defaults of a training run; MLP takes its own defaults from here too.
DEFAULT_DIM = (784, 512, 256, 10)
DEFAULT_DROPOUT = 0.2
DEFAULT_LEARNING_RATE = 3e-3
DEFAULT_WEIGHT_DECAY = 1e-4


def _not_a_bool(value: Any) -> Any:
    """Pydantic reads true as 1: a number that is a JSON boolean is a client's mistake, refused as the
    document's schema (number, integer) says. Strings still convert, for INI and YAML files.

    >>> from pydantic import ValidationError
    >>> try:
    ...     TrainConfig(epochs=True)
    ... except ValidationError as exc:
    ...     print(exc.errors()[0]["msg"])
    Value error, a number, not true or false
    """
    if isinstance(value, bool):
        raise ValueError("a number, not true or false")
    return value


Int = Annotated[int, BeforeValidator(_not_a_bool)]
Float = Annotated[float, BeforeValidator(_not_a_bool)]


class TrainConfig(BaseModel):
    """Every knob of a training run, validated; unknown keys are refused.

    >>> TrainConfig(epochs=2, hidden_dims="128, 64").hidden_dims
    [128, 64]
    """

    model_config = ConfigDict(extra="forbid")

    epochs: Int = Field(10, ge=1, le=1000, description="passes over the training split")
    learning_rate: Float = Field(
        DEFAULT_LEARNING_RATE, gt=0, le=1, description="peak learning rate of the one-cycle schedule"
    )
    batch_size: Int = Field(256, ge=1, le=8192, description="images per training step")
    hidden_dims: list[Int] = Field(
        list(DEFAULT_DIM[1:-1]), max_length=8, description="sizes of the hidden layers"
    )
    dropout: Float = Field(DEFAULT_DROPOUT, ge=0, lt=1, description="dropout after each hidden layer")
    weight_decay: Float = Field(DEFAULT_WEIGHT_DECAY, ge=0, le=1, description="AdamW weight decay")
    seed: Int = Field(42, ge=0, description="seeds the split, the initial weights and the shuffling")
    num_train: Int = Field(55_000, ge=1, le=TRAIN_SIZE, description="training images")
    num_val: Int = Field(5_000, ge=1, le=TRAIN_SIZE, description="validation images")
    with_feedback: bool = Field(
        False, description="add the prediction log's feedback-labelled inputs to the training split"
    )

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
        """Read a config from a JSON, YAML or INI file (INI: the ``[train]`` and ``[promotion]`` sections).

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
        if suffix not in (".json", ".yaml", ".yml", ".ini", ".cfg"):
            raise ValueError(f"unsupported config file type {suffix!r}: use .json, .yaml, .yml or .ini")
        try:
            data = _read_mapping(text, suffix)
        except (ValueError, yaml.YAMLError, configparser.Error) as exc:
            kind = {".yml": "YAML", ".cfg": "INI"}.get(suffix, suffix[1:].upper())
            raise ValueError(f"cannot read the {kind} config: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("a training config must be a mapping of parameter names to values")
        return cls.model_validate(data)


def _read_mapping(text: str, suffix: str) -> Any:
    if suffix == ".json":
        return json.loads(text)
    if suffix in (".yaml", ".yml"):
        return yaml.safe_load(text)
    parser = configparser.ConfigParser()
    parser.read_string(text)
    if not parser.has_section("train"):
        raise ValueError("an INI training config needs a [train] section")
    data: dict[str, Any] = dict(parser["train"])
    if parser.has_section("promotion"):
        data["promotion"] = dict(parser["promotion"])
    return data


class PromotionPolicy(BaseModel):
    """How the gate decides; shared by ``mindtrace train``, the Python API and ``POST /retrain``."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["if-better", "always", "never"] = Field(
        "if-better", description="if-better: beat the champion by the margin; always; never"
    )
    metric: Literal["test_acc", "test_macro_f1", "test_loss"] = Field(
        "test_acc", description="what 'better' means (test_loss: lower is better)"
    )
    margin: Float = Field(0.0, ge=0, le=1, description="how much better the challenger must be")
    min_accuracy: Float = Field(
        0.9, ge=0, le=1, description="test accuracy the first champion needs (if-better, no champion yet)"
    )
    rollout: Literal["none", "shadow", "canary"] = Field(
        "none",
        description="none: a version that passes becomes champion at once; shadow or canary: it starts a "
        "rollout instead, and live traffic confirms (promotes) or rolls it back ([ROLLOUT] criteria)",
    )
    rollout_percent: Float | None = Field(
        None, ge=0, le=100, description="the rollout's share of requests (default: canary 10, shadow 100)"
    )

    @classmethod
    def from_config(cls, config: Config | None = None) -> PromotionPolicy:
        """The ``[PROMOTION]`` section of the settings."""
        section = (config or Config())["PROMOTION"]
        return cls(
            policy=section["POLICY"],
            metric=section["METRIC"],
            margin=section.getfloat("MARGIN"),
            min_accuracy=section.getfloat("MIN_ACCURACY"),
            rollout=section.get("ROLLOUT", "none"),
            rollout_percent=section.getfloat("ROLLOUT_PERCENT") if section.get("ROLLOUT_PERCENT") else None,
        )


class TrainRequest(TrainConfig):
    """A training config plus the gate its new version faces: the body of ``POST /retrain``, and what a
    ``mindtrace train --config`` file holds. Without ``promotion`` the ``[PROMOTION]`` settings apply.

    >>> r = TrainRequest.model_validate({"epochs": 2, "promotion": {"policy": "always", "margin": 0.01}})
    >>> r.train_config().epochs, r.promotion.policy
    (2, 'always')
    >>> TrainRequest.model_validate({"epochs": 2, "policy": "never"}).promotion.policy
    'never'
    """

    promotion: PromotionPolicy | None = Field(
        None,
        description="the promotion gate for the new version (default: the [PROMOTION] settings); a policy "
        'name alone ("always") is short for {"policy": "always"}, and so is a top-level "policy"',
    )

    @model_validator(mode="before")
    @classmethod
    def _policy_shorthands(cls, data: Any) -> Any:
        # Callers write the policy the short way ("promotion": "always", or "policy": "always" beside the
        # training knobs); both mean the same gate, so both are read rather than refused.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("policy", "promotion_policy"):
            if key in data and "promotion" not in data:
                data["promotion"] = data.pop(key)
        if isinstance(data.get("promotion"), str):
            data["promotion"] = {"policy": data["promotion"]}
        return data

    def train_config(self) -> TrainConfig:
        """The training knobs alone, as recorded with the run."""
        return TrainConfig.model_validate(self.model_dump(exclude={"promotion"}))
