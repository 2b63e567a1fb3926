"""Training on real MNIST subsets: the contract's example, the one train() path, and its config."""

import json

import pytest
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient
from PIL import Image, ImageOps
from pydantic import ValidationError
from torch.nn import functional as F

from mindtrace import Config
from mindtrace.data import MNIST
from mindtrace.models import MLP
from mindtrace.preprocess import preprocess
from mindtrace.registry import MlflowLightningCallback, tracking_uri
from mindtrace.train import TrainConfig, train
from mindtrace.train_config import TrainRequest

SMALL = {"epochs": 3, "num_train": 6000, "num_val": 1000, "hidden_dims": [128], "batch_size": 128}


class EpochLosses(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.losses.append(float(trainer.callback_metrics["train_loss_epoch"]))


@pytest.mark.slow
def test_training_smoke_loss_falls_and_accuracy_is_far_above_chance(mnist_home):
    losses = EpochLosses()
    result = train(TrainConfig(**SMALL), callbacks=[losses], progress=False)
    assert losses.losses[-1] < losses.losses[0] * 0.6, losses.losses
    assert result.metrics["test_acc"] > 0.9  # chance is 0.1
    assert result.metrics["epochs"] == 3
    # The returned module is the tested one: its own accuracy on the test set agrees.
    x, y = result.datamodule.test_dataloader().dataset[list(range(10_000))]
    result.model.eval()
    with torch.no_grad():
        logits = result.model(x)
    assert (logits.argmax(1) == y).float().mean().item() == pytest.approx(
        result.metrics["test_acc"], abs=1e-4
    )
    assert F.cross_entropy(logits, y).item() == pytest.approx(result.metrics["test_loss"], abs=1e-3)
    assert result.best_checkpoint and result.best_checkpoint.startswith(str(mnist_home / "checkpoints"))

    # The trained model reads digits sent in other forms, through the one preprocessing path.
    def accuracy(transform, n=500):
        samples = [result.datamodule.sample("test", i) for i in range(n)]
        x = torch.stack([preprocess(transform(img)) for img, _ in samples])
        with torch.no_grad():
            predicted = result.model(x).argmax(1)
        return (predicted == torch.tensor([label for _, label in samples])).float().mean().item()

    as_is = accuracy(lambda img: img)
    assert accuracy(lambda img: ImageOps.invert(img).convert("RGB")) == as_is  # dark ink on white paper
    assert accuracy(lambda img: img.resize((84, 84), Image.Resampling.BICUBIC)) > as_is - 0.06
    assert accuracy(lambda img: ImageOps.expand(img, border=(20, 6, 12, 6))) > as_is - 0.06  # off-centre


@pytest.mark.slow
def test_train_is_reproducible_under_a_seed(mnist_home):
    config = TrainConfig(epochs=1, num_train=3000, num_val=500, hidden_dims=[64], seed=3)
    a = train(config, progress=False).metrics
    b = train(config, progress=False).metrics
    assert a["test_acc"] == b["test_acc"] and a["test_loss"] == b["test_loss"]


@pytest.mark.slow
def test_contract_example_records_the_run_in_mlflow(mnist_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Lightning's default logger writes into the working directory
    # Exactly the contract's example.
    cb = MlflowLightningCallback(params={"param1": "value1"}, experiment_name="my_experiment")
    trainer = pl.Trainer(callbacks=[cb], max_epochs=10)
    trainer.fit(MLP(), MNIST())

    assert trainer.callback_metrics["val_acc"] > 0.95
    client = MlflowClient(tracking_uri(Config()))
    assert tracking_uri(Config()).startswith(f"sqlite:///{mnist_home}")
    run = client.get_run(cb.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["user.param1"] == "value1"
    assert run.data.params["data.num_train"] == "55000"
    assert json.loads(run.data.params["model.dim"]) == [784, 512, 256, 10]
    assert len(client.get_metric_history(cb.run_id, "val_acc")) == 10
    assert client.get_experiment(run.info.experiment_id).name == "my_experiment"

    trainer.test(datamodule=trainer.datamodule, ckpt_path="best")
    assert client.get_run(cb.run_id).data.metrics["test_acc"] > 0.95


class Boom(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        raise RuntimeError("disk full")


@pytest.mark.slow
def test_a_crashed_run_is_marked_failed(mnist_home):
    cb = MlflowLightningCallback(experiment_name="crash")
    with pytest.raises(RuntimeError, match="disk full"):
        train(TrainConfig(epochs=2, num_train=1000, num_val=100), callbacks=[cb, Boom()], progress=False)
    run = MlflowClient(tracking_uri(Config())).get_run(cb.run_id)
    assert run.info.status == "FAILED"
    assert "disk full" in run.data.tags["mindtrace.error"]


def test_train_config_defaults_and_dim():
    config = TrainConfig()
    assert config.dim == [784, 512, 256, 10]
    assert TrainConfig(hidden_dims="64 32").dim == [784, 64, 32, 10]


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": -1}, "learning_rate"),
        ({"dropout": 1.0}, "dropout"),
        ({"hidden_dims": [0]}, "hidden_dims"),
        ({"batch_size": "many"}, "batch_size"),
        ({"num_train": 59_000, "num_val": 2_000}, "num_train + num_val"),
        ({"epoch": 3}, "epoch"),  # a typo is refused, not ignored
        ({"epochs": True}, "epochs"),  # JSON's true is no number (pydantic alone would read it as 1)
        ({"dropout": False}, "dropout"),
        ({"hidden_dims": [True]}, "hidden_dims"),
    ],
)
def test_train_config_names_the_bad_field(values, field):
    with pytest.raises(ValidationError) as info:
        TrainConfig(**values)
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.json", '{"epochs": 4, "hidden_dims": [64, 32]}'),
        ("c.yaml", "epochs: 4\nhidden_dims: [64, 32]\n"),
        ("c.ini", "[train]\nepochs = 4\nhidden_dims = 64, 32\n"),
    ],
)
def test_train_config_from_files(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    config = TrainConfig.from_file(path)
    assert (config.epochs, config.hidden_dims) == (4, [64, 32])


def test_train_config_from_bad_files(tmp_path):
    (tmp_path / "c.toml").write_text("epochs = 1")
    with pytest.raises(ValueError, match="unsupported"):
        TrainConfig.from_file(tmp_path / "c.toml")
    (tmp_path / "c.ini").write_text("[other]\nepochs = 1\n")
    with pytest.raises(ValueError, match=r"\[train\]"):
        TrainConfig.from_file(tmp_path / "c.ini")
    (tmp_path / "c.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        TrainConfig.from_file(tmp_path / "c.yaml")
    # Text that is not the format at all is a ValueError too (the API answers 422), not a parser's error.
    for name, text in [("c.yaml", "epochs: [1\n"), ("c.ini", "epochs = 1\n"), ("c.json", "{epochs")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match="cannot read the"):
            TrainConfig.from_file(tmp_path / name)


@pytest.mark.parametrize(
    "body",
    [
        {"promotion": {"policy": "always"}},
        {"promotion": "always"},
        {"policy": "always"},
        {"promotion_policy": "always"},
    ],
)
def test_train_request_reads_the_policy_however_it_is_written(body):
    request = TrainRequest.model_validate({"epochs": 1, **body})
    assert request.promotion.policy == "always"
    assert "promotion" not in request.train_config().model_dump()


def test_train_request_names_a_bad_policy():
    with pytest.raises(ValidationError) as info:
        TrainRequest.model_validate({"policy": "sometimes"})
    assert info.value.errors()[0]["loc"] == ("promotion", "policy")


def test_train_request_refuses_a_boolean_threshold():
    # Found by schemathesis (seed 555818139): {"promotion": {"min_accuracy": false}} was read as 0.0.
    with pytest.raises(ValidationError) as info:
        TrainRequest.model_validate({"promotion": {"min_accuracy": False}})
    assert info.value.errors()[0]["loc"] == ("promotion", "min_accuracy")
