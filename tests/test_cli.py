"""The ``mindtrace`` console script, run as users run it: a subprocess of the installed entry point."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mindtrace import Config
from mindtrace.registry import tracking_uri

MINDTRACE = shutil.which("mindtrace", path=str(Path(sys.executable).parent))


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    # The autouse fixture has put this test's MINDTRACE_* settings into os.environ.
    proc = subprocess.run(
        [MINDTRACE, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def test_help_lists_the_commands():
    out = run("--help").stdout
    for command in ("train", "registry", "data", "config", "bench"):
        assert command in out
    train_help = run("train", "--help").stdout
    assert "--hidden-dims" in train_help and "--policy" in train_help and "--min-accuracy" in train_help
    registry_help = run("registry", "--help").stdout
    for action in ("models", "versions", "show", "compare", "promote", "rollback", "history", "import"):
        assert action in registry_help


def test_config_shows_the_isolated_home(_isolated_home):
    settings = json.loads(run("config", "--json").stdout)
    assert settings["DIR_PATHS"]["DATA"] == f"{_isolated_home}/data"


def test_invalid_option_names_the_field():
    proc = run("train", "--epochs", "0", check=False)
    assert proc.returncode == 2
    assert "invalid epochs" in proc.stdout


def test_unreadable_config_file_is_a_clear_error(tmp_path):
    proc = run("train", "--config", str(tmp_path / "missing.yaml"), check=False)
    assert proc.returncode == 2 and "missing.yaml" in proc.stdout


def test_data_fetch_without_any_source_explains_how_to_supply_the_data():
    proc = run("data", "fetch", check=False)
    assert proc.returncode == 1
    assert "local (no folder set)" in proc.stdout
    assert "MINDTRACE__MNIST__LOCAL_DIR" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_data_fetch_from_a_local_folder(real_mnist_dir, _isolated_home):
    report = json.loads(run("data", "fetch", "--local-dir", str(real_mnist_dir), "--json").stdout)
    assert report["data_dir"] == str(_isolated_home / "data" / "mnist")
    assert {f["source"] for f in report["files"].values()} == {f"local {real_mnist_dir}"}
    assert (_isolated_home / "data" / "mnist" / "train-images-idx3-ubyte").is_file()
    # A second run finds the verified cache and copies nothing.
    report = json.loads(run("data", "fetch", "--json").stdout)
    assert {f["source"] for f in report["files"].values()} == {"cache"}


@pytest.mark.slow
def test_train_with_a_config_file_prints_json_metrics(mnist_home, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("epochs: 1\nnum_train: 3000\nnum_val: 500\nhidden_dims: [64]\n")
    proc = run("train", "--config", str(config), "--batch-size", "128", "--json")
    metrics = json.loads(proc.stdout)
    assert metrics["epochs"] == 1 and metrics["test_acc"] > 0.8
    recorded = MlflowClient(tracking_uri(Config())).get_run(metrics["mlflow_run_id"]).data
    assert recorded.params["train.batch_size"] == "128"  # the CLI option beat the file's default
    assert recorded.params["train.hidden_dims"] == "[64]"
    assert recorded.metrics["test_acc"] == metrics["test_acc"]
    # Registered, and gated by the default policy: the first version needs 90% test accuracy.
    assert metrics["registered_model"] == "mnist-mlp" and metrics["registered_version"] == "1"
    assert metrics["promoted"] == (metrics["test_acc"] >= 0.9)
    assert "no champion yet" in metrics["gate_reason"]


@pytest.mark.slow
def test_registry_commands_from_training_to_import(mnist_home):
    tiny = ["--epochs", "1", "--num-train", "3000", "--num-val", "500", "--hidden-dims", "32", "--json"]
    first = json.loads(run("train", *tiny, "--min-accuracy", "0.5").stdout)
    second = json.loads(run("train", *tiny, "--seed", "7", "--policy", "never").stdout)
    assert (first["registered_version"], first["promoted"]) == ("1", True)
    assert (second["registered_version"], second["promoted"], second["aliases"]) == ("2", False, "challenger")

    models = json.loads(run("registry", "models", "--json").stdout)
    assert models[0]["aliases"] == {"champion": "1", "challenger": "2"} and models[0]["num_versions"] == 2
    versions = json.loads(run("registry", "versions", "--where", "params.train.seed=7", "--json").stdout)
    assert [v["version"] for v in versions] == ["2"]
    table = run("registry", "versions", "--order-by", "metrics.test_acc desc").stdout
    assert "versions of mnist-mlp" in table and "champion" in table
    shown = json.loads(run("registry", "show", "champion", "--json").stdout)
    assert shown["version"] == "1" and shown["metrics"]["test_acc"] == first["test_acc"]
    assert "test_acc" in run("registry", "compare", "1", "2").stdout

    moved = json.loads(run("registry", "promote", "challenger", "--reason", "looks good", "--json").stdout)
    assert (moved["previous"], moved["version"], moved["reason"]) == ("1", "2", "looks good")
    assert "version 2 -> 1" in run("registry", "rollback").stdout
    history = json.loads(run("registry", "history", "--alias", "champion", "--json").stdout)
    assert [(e["action"], e["version"]) for e in history] == [("set", "1"), ("set", "2"), ("rollback", "1")]

    imported = json.loads(run("registry", "import", "--json").stdout)
    assert imported["created"] and imported["version"] == "1"
    assert "already in the BentoML store" in run("registry", "import", "1").stdout

    for args, message in (
        (("registry", "show", "9"), "has no version 9; versions: 1, 2"),
        (("registry", "show", "-m", "nope"), "no registered model named 'nope'"),
        (("registry", "rollback", "--alias", "challenger"), "no earlier version"),
    ):
        proc = run(*args, check=False)
        assert proc.returncode == 1 and message in proc.stdout, proc.stdout
        assert "Traceback" not in proc.stdout + proc.stderr
    proc = run("registry", "versions", "--where", "accuracy>1", check=False)
    assert proc.returncode == 2 and "unknown key 'accuracy'" in proc.stdout
