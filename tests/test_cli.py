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
    for command in ("train", "data", "config", "bench"):
        assert command in out
    assert "--hidden-dims" in run("train", "--help").stdout


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
    assert recorded.params["user.train.batch_size"] == "128"  # the CLI option beat the file's default
    assert recorded.params["user.train.hidden_dims"] == "[64]"
    assert recorded.metrics["test_acc"] == metrics["test_acc"]
