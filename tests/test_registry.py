"""The registry end to end, against the embedded SQLite store and against a real ``mlflow server`` process.

Each store gets three short trainings on real MNIST (one per gate policy); the other tests read them, or copy
their models into registered models of their own, so that no test depends on another's alias moves.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import bentoml
import mlflow.pyfunc
import numpy as np
import pytest
import pytorch_lightning as pl
import requests
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import _validate_model_alias_name, _validate_model_alias_name_reserved

from mindtrace import Config
from mindtrace.registry import (
    InvalidQueryError,
    MlflowLightningCallback,
    NotFoundError,
    Registry,
    RegistryError,
    RegistryUnavailableError,
    import_version,
    load_bento_mlp,
    review,
)
from mindtrace.registry.aliases import rollback_target
from mindtrace.registry.bento import WEIGHTS_FILE
from mindtrace.registry.errors import ERROR_CODES, ConflictError
from mindtrace.registry.filters import (
    CONDITION_PATTERN,
    ORDER_PATTERN,
    field_value,
    order,
    parse_condition,
    parse_order,
    sort_key,
)
from mindtrace.registry.gate import decide
from mindtrace.registry.mlflow_errors import mlflow_errors
from mindtrace.registry.names import check_alias
from mindtrace.registry.schemas import AliasEvent, VersionInfo
from mindtrace.train import train
from mindtrace.train_config import PromotionPolicy, TrainConfig

TINY = TrainConfig(epochs=2, num_train=4000, num_val=500, hidden_dims=[64], batch_size=128)
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Store:
    kind: str
    registry: Registry
    config: Config
    runs: list[MlflowLightningCallback]  # in training order: versions 1, 2, 3

    def test_batches(self):
        return self.runs[0]._test_batches


def _settings(home: Path, data_dir: Path) -> Config:
    return Config(
        env={
            "MINDTRACE_HOME": str(home),
            "MINDTRACE__DIR_PATHS__DATA": str(data_dir.parent),
            "MINDTRACE__MNIST__SOURCES": "local",
        }
    )


def _train(settings: Config, uri: str | None, policy: PromotionPolicy, seed: int, name: str = "mnist-mlp"):
    config = TINY.model_copy(update={"seed": seed})
    cb = MlflowLightningCallback(
        params={"purpose": "test"},
        tracking_uri=uri,
        config=settings,
        train_config=config,
        registered_model=name,
        promotion=policy,
    )
    result = train(config, callbacks=[cb], settings=settings, progress=False)
    cb._test_batches = list(result.datamodule.test_dataloader())
    return cb


@pytest.fixture(scope="module", params=["embedded", "server"])
def store(request, tmp_path_factory, real_mnist_dir) -> Store:
    home = tmp_path_factory.mktemp(f"home-{request.param}")
    settings = _settings(home, real_mnist_dir)
    uri = request.getfixturevalue("mlflow_server") if request.param == "server" else None
    runs = [
        _train(settings, uri, PromotionPolicy(policy="if-better", min_accuracy=0.5), seed=1),
        _train(settings, uri, PromotionPolicy(policy="never"), seed=2),
        _train(settings, uri, PromotionPolicy(policy="always"), seed=3),
    ]
    return Store(request.param, Registry(uri, settings), settings, runs)


def _copy_model(store: Store, count: int) -> str:
    """A fresh registered model holding ``count`` versions, made from the trained runs' models."""
    name = f"copy-{uuid.uuid4().hex[:8]}"
    for i in range(count):
        run = store.runs[i % len(store.runs)]
        store.registry.register(run.run_id, run.version.artifacts["model"], name)
    return name


# --- what a training records --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_records_rich_metadata(store):
    run = store.runs[0]
    info = store.registry.get_version(None, run.version.version)
    client = store.registry.client
    mlflow_run = client.get_run(run.run_id)

    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.info.end_time >= mlflow_run.info.start_time
    assert info.metrics["duration_seconds"] > 0
    assert info.run_tags["mindtrace.started_at"] <= info.run_tags["mindtrace.ended_at"]
    # the training config, the user's params, the model's and the data's
    assert info.params["train.epochs"] == "2" and info.params["train.hidden_dims"] == "[64]"
    assert info.params["user.purpose"] == "test"
    assert info.params["model.dim"] == "[784, 64, 10]"
    assert info.params["data.num_train"] == "4000" and info.params["data.seed"] == "1"
    # provenance
    for package in ("mindtrace", "torch", "pytorch_lightning", "mlflow", "bentoml", "python"):
        assert info.run_tags[f"versions.{package}"] not in ("", "not installed")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # CI runs a git clone; an exported tarball has no commit to record
        assert info.run_tags["mlflow.source.git.commit"] == head.stdout.strip()
    assert len(info.run_tags["mindtrace.data.digest"]) == 64
    assert info.run_tags["mindtrace.data.sources"] == "cache"  # the session fixture fetched it already
    assert [d.dataset.name for d in mlflow_run.inputs.dataset_inputs] == ["mnist"]
    # metrics per epoch and the final test figures
    assert [m.step for m in client.get_metric_history(run.run_id, "val_acc")] == [0, 1]
    assert 0.8 < info.metrics["test_acc"] <= 1 and 0.8 < info.metrics["test_macro_f1"] <= 1
    per_class = [info.metrics[f"test_acc_class_{k}"] for k in range(10)]
    assert min(per_class) > 0.5
    assert run.evaluation.accuracy == pytest.approx(info.metrics["test_acc"])
    assert sum(map(sum, run.evaluation.confusion_matrix)) == 10_000
    # artifacts: confusion matrix picture, model with signature and example, checkpoint, fingerprint
    artifacts = {
        f.path for folder in ("evaluation", "model", "checkpoints", "data")
        for f in client.list_artifacts(run.run_id, folder)
    }  # fmt: skip
    assert {"evaluation/confusion_matrix.png", "model/MLmodel", "data/fingerprint.json"} <= artifacts
    assert any(p.startswith("checkpoints/") and p.endswith(".ckpt") for p in artifacts)
    for key in ("model", "checkpoint", "confusion_matrix", "fingerprint"):
        assert info.artifacts[key].startswith(info.artifacts["run"])


@pytest.mark.slow
def test_the_confusion_matrix_is_a_picture(store, tmp_path):
    path = store.registry.client.download_artifacts(
        store.runs[0].run_id, "evaluation/confusion_matrix.png", str(tmp_path)
    )
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_mlflow_model_has_a_signature_and_predicts_like_the_registry_module(store, tmp_path):
    info = store.registry.get_version(None, "1")
    folder = store.registry.download_model(info, tmp_path)
    pyfunc = mlflow.pyfunc.load_model(str(folder))
    assert pyfunc.metadata.get_input_schema().inputs[0].shape == (-1, 1, 28, 28)
    assert (folder / "input_example.json").is_file()
    x, y = store.test_batches()[0]
    net, _ = store.registry.load_module(None, "1")
    np.testing.assert_allclose(pyfunc.predict(x[:300].numpy()), net(x[:300]).detach().numpy(), atol=1e-5)


@pytest.mark.slow
def test_versions_increment_and_are_tagged_to_be_found(store):
    versions = store.registry.list_versions()
    assert [v.version for v in versions] == ["3", "2", "1"]
    assert [r.version.version for r in store.runs] == ["1", "2", "3"]
    for run, number in zip(store.runs, ("1", "2", "3"), strict=True):
        info = store.registry.get_version(None, number)
        assert info.run_id == run.run_id
        assert info.tags["mindtrace.data.digest"] == info.run_tags["mindtrace.data.digest"]
        assert float(info.tags["test_acc"]) == pytest.approx(info.metrics["test_acc"], abs=1e-4)


# --- the promotion gate -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_gate_decided_each_training_by_its_policy_and_recorded_why(store):
    first, never, always = (store.registry.get_version(None, v) for v in ("1", "2", "3"))
    assert first.tags["mindtrace.gate.decision"] == "promoted"
    assert "no champion yet" in first.tags["mindtrace.gate.reason"]
    assert never.tags["mindtrace.gate.decision"] == "rejected"
    assert "'never'" in never.tags["mindtrace.gate.reason"]
    assert never.tags["mindtrace.gate.champion_version"] == "1"
    assert always.tags["mindtrace.gate.decision"] == "promoted"
    assert always.run_tags["mindtrace.gate.decision"] == "promoted"  # on the run too
    # Both models were scored on the same test set, named by its digest.
    assert never.tags["mindtrace.gate.evaluated_on"].startswith("10000 examples, sha256 ")
    assert never.tags["mindtrace.gate.evaluated_on"] == always.tags["mindtrace.gate.evaluated_on"]
    models = {m.name: m for m in store.registry.list_models()}
    # v3 took the challenger alias from v2, then passed and gave it up: no candidate is waiting.
    assert models["mnist-mlp"].aliases == {"champion": "3"}


@pytest.mark.slow
def test_if_better_compares_with_the_champion_on_the_same_test_set(store):
    name = _copy_model(store, 3)
    registry, batches = store.registry, store.test_batches()
    accuracy = {v: registry.get_version(name, v).metrics["test_acc"] for v in ("1", "2", "3")}
    worst, best = min(accuracy, key=accuracy.get), max(accuracy, key=accuracy.get)
    registry.set_alias(name, "champion", worst)

    strict = review(registry, best, batches, PromotionPolicy(margin=0.5), name)
    assert not strict.promoted and "does not beat the champion" in strict.reason
    assert strict.champion_version == worst
    assert strict.champion_score == pytest.approx(accuracy[worst], abs=1e-6)
    assert registry.get_version(name, "champion").version == worst
    assert registry.get_version(name, "challenger").version == best

    passed = review(registry, best, batches, PromotionPolicy(margin=0.0), name)
    assert passed.promoted and "beats the champion" in passed.reason
    assert passed.challenger_score == pytest.approx(accuracy[best], abs=1e-6)
    info = registry.get_version(name, "champion")
    assert info.version == best and "challenger" not in info.aliases
    assert info.tags["mindtrace.gate.decision"] == "promoted"


def test_decide_rules():
    better = PromotionPolicy(policy="if-better", margin=0.01, min_accuracy=0.95)
    assert decide(better, 0.99, 0.97, 0.99)[0]
    assert not decide(better, 0.975, 0.97, 0.975)[0]  # better, but not by the margin
    assert not decide(better, 0.97, 0.97, 0.97)[0]
    first = "no champion yet; test accuracy 0.9600 >= the minimum 0.9500"
    assert decide(better, 0.96, None, 0.96) == (True, first)
    assert not decide(better, 0.90, None, 0.90)[0]
    loss = PromotionPolicy(metric="test_loss", margin=0.01)
    assert decide(loss, 0.05, 0.10, 0.98)[0] and not decide(loss, 0.10, 0.05, 0.99)[0]
    assert decide(PromotionPolicy(policy="always"), 0.1, 0.99, 0.1)[0]
    assert not decide(PromotionPolicy(policy="never"), 0.99, 0.1, 0.99)[0]


# --- queries ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_filters_and_ordering(store):
    registry = store.registry
    by_acc = registry.list_versions(order_by="metrics.test_acc desc")
    accs = [v.metrics["test_acc"] for v in by_acc]
    assert accs == sorted(accs, reverse=True) and len(accs) == 3
    assert [v.version for v in registry.list_versions(order_by="version asc")] == ["1", "2", "3"]
    middle = sorted(accs)[1]
    above = registry.list_versions(where=[f"metrics.test_acc >= {middle}"])
    assert sorted(v.metrics["test_acc"] for v in above) == sorted(accs)[1:]
    assert [v.version for v in registry.list_versions(where=["alias=champion"])] == ["3"]
    assert [v.version for v in registry.list_versions(where=["alias!=champion"])] == ["2", "1"]
    assert [v.version for v in registry.list_versions(where=["params.data.seed=2"])] == ["2"]
    rejected = registry.list_versions(where=["tags.mindtrace.gate.decision = rejected"])
    assert [v.version for v in rejected] == ["2"]
    assert [v.version for v in registry.list_versions(where=["version>1", "version<3"])] == ["2"]
    assert len(registry.list_versions(limit=2)) == 2
    assert registry.list_versions(where=["metrics.no_such_metric > 0"]) == []
    for bad in (["test_acc > 1"], ["metrics.test_acc ~ 1"], ["nonsense"]):
        with pytest.raises(InvalidQueryError):
            registry.list_versions(where=bad)
    with pytest.raises(InvalidQueryError, match="asc|desc"):
        registry.list_versions(order_by="version sideways")


@pytest.mark.slow
def test_get_by_number_or_alias_and_compare(store):
    registry = store.registry
    champion = registry.get_version(None, "champion")
    assert champion == registry.get_version(None, 3) and champion.aliases == ["champion"]
    assert champion.created_at <= champion.updated_at
    comparison = registry.compare(None, "1", "champion")
    assert comparison.a == "1" and comparison.b == "3"
    acc = comparison.metrics["test_acc"]
    assert acc.delta == pytest.approx(acc.b - acc.a)
    assert comparison.params_changed["data.seed"] == ("1", "3")
    assert not comparison.same_data  # a different seed splits the data differently
    # Results are pydantic models: JSON and back, unchanged.
    assert type(champion).model_validate_json(champion.model_dump_json()) == champion


@pytest.mark.slow
def test_unknown_models_versions_and_aliases_are_clear_errors(store):
    registry = store.registry
    with pytest.raises(NotFoundError, match="no registered model named 'nope'.*mnist-mlp"):
        registry.get_version("nope", "1")
    with pytest.raises(NotFoundError, match=r"has no version 42; versions: 1, 2, 3"):
        registry.get_version(None, "42")
    with pytest.raises(NotFoundError, match="has no alias 'staging'"):
        registry.get_version(None, "staging")
    with pytest.raises(
        NotFoundError, match="has no version 9999"
    ):  # beyond a 64-bit integer (found by fuzzing)
        registry.get_version(None, "9" * 30)
    with pytest.raises(NotFoundError, match="has no alias '²'"):  # a digit to str.isdigit, not to int()
        registry.get_version(None, "²")
    with pytest.raises(NotFoundError):
        registry.list_versions("nope")
    with pytest.raises(NotFoundError):
        registry.set_alias(None, "champion", "42")
    with pytest.raises(InvalidQueryError, match="invalid alias"):
        registry.set_alias(None, "latest", "1")


# --- aliases: promotion and exact rollback -------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_alias_moves_keep_the_log_exact(store):
    """Four movers (each its own client, as the API's workers and a retraining job are) move one alias at
    once: every logged move starts where the one before it ended, and rollback still restores exactly."""
    name = _copy_model(store, 3)

    def mover(k: int) -> list:
        registry = Registry(store.registry.tracking_uri, store.config)
        return [
            registry.set_alias(name, "champion", str((k + i) % 3 + 1), reason=f"{k}-{i}", actor=f"mover-{k}")
            for i in range(6)
        ]

    with ThreadPoolExecutor(4) as pool:
        events = [e for moved in pool.map(mover, range(4)) for e in moved]
    history = store.registry.alias_history(name, "champion")
    # Every real move is logged once; a move to where the alias already points is none, and not logged (how
    # many of those there are depends on how the movers interleave).
    moved = sorted(e.reason for e in events if e.previous != e.version)
    assert sorted(e.reason for e in history) == moved and len(moved) >= 3
    for before, after in zip(history, history[1:], strict=False):
        assert after.previous == before.version, (before, after)
    assert history[-1].version == store.registry.alias_target(name, "champion")
    assert store.registry.rollback(name, "champion").version == history[-1].previous


@pytest.mark.slow
def test_alias_moves_and_exact_rollback(store):
    registry = store.registry
    name = _copy_model(store, 4)
    for version in ("1", "2", "3", "4"):
        registry.set_alias(name, "champion", version, reason=f"promote {version}")
    assert registry.set_alias(name, "champion", "4").previous == "4"  # no move, nothing logged

    assert registry.rollback(name).version == "3"
    assert registry.rollback(name).version == "2"
    registry.set_alias(name, "champion", "4", reason="hotfix")  # a new move after rollbacks
    assert registry.rollback(name).version == "2"  # back to exactly what it replaced
    assert registry.rollback(name).version == "1"
    with pytest.raises(ConflictError, match="no earlier version"):
        registry.rollback(name)
    assert registry.get_version(name, "champion").version == "1"

    history = registry.alias_history(name, "champion")
    assert [(e.action, e.previous, e.version) for e in history] == [
        ("set", None, "1"), ("set", "1", "2"), ("set", "2", "3"), ("set", "3", "4"),
        ("rollback", "4", "3"), ("rollback", "3", "2"), ("set", "2", "4"),
        ("rollback", "4", "2"), ("rollback", "2", "1"),
    ]  # fmt: skip
    assert history[6].reason == "hotfix" and history[0].actor

    # Aliases are independent: a challenger has its own history.
    registry.set_alias(name, "challenger", "2")
    registry.remove_alias(name, "challenger", reason="rejected")
    assert registry.rollback(name, "challenger").version == "2"
    assert registry.get_version(name, "champion").version == "1"


# --- a crash registers nothing ------------------------------------------------------------------------------


class Boom(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        raise RuntimeError("disk full")


@pytest.mark.slow
def test_a_crashed_run_is_marked_failed_and_registers_nothing(store):
    registry = store.registry
    before = [v.version for v in registry.list_versions()]
    cb = MlflowLightningCallback(tracking_uri=registry.tracking_uri, config=store.config)
    with pytest.raises(RuntimeError, match="disk full"):
        train(TINY, callbacks=[cb, Boom()], settings=store.config, progress=False)
    run = registry.client.get_run(cb.run_id)
    assert run.info.status == "FAILED" and "disk full" in run.data.tags["mindtrace.error"]
    assert [v.version for v in registry.list_versions()] == before
    assert cb.version is None


@pytest.mark.slow
def test_a_failure_after_registration_removes_the_version(store):
    registry = store.registry
    before = [v.version for v in registry.list_versions()]
    # A policy built without validation, naming a metric the gate cannot find: it fails after registering.
    broken = PromotionPolicy.model_construct(
        policy="if-better", metric="no_such_metric", margin=0.0, min_accuracy=0.0
    )
    cb = MlflowLightningCallback(tracking_uri=registry.tracking_uri, config=store.config, promotion=broken)
    with pytest.raises(KeyError, match="no_such_metric"):
        train(TINY, callbacks=[cb], settings=store.config, progress=False)
    assert registry.client.get_run(cb.run_id).info.status == "FAILED"
    assert [v.version for v in registry.list_versions()] == before
    assert registry.get_version(None, "champion").version == "3"


# --- import into the BentoML store --------------------------------------------------------------------------


@pytest.mark.slow
def test_import_is_idempotent_and_predicts_like_mlflow(store, tmp_path):
    registry = store.registry
    first = import_version("champion", registry=registry)
    again = import_version("3", registry=registry)
    assert first.created and not again.created and first.tag == again.tag
    assert first.version == "3" and first.tag == f"mnist-mlp:v3-{store.runs[2].run_id[:8]}"
    assert len([m for m in bentoml.models.list() if str(m.tag) == first.tag]) == 1

    net, model = load_bento_mlp(first.tag)
    labels, metadata = model.info.labels, model.info.metadata
    assert labels["mlflow-version"] == "3" and labels["mlflow-run-id"] == store.runs[2].run_id
    assert metadata["mlflow"]["name"] == "mnist-mlp" and metadata["mlflow"]["run_id"] == store.runs[2].run_id
    assert metadata["metrics"]["test_acc"] == registry.get_version(None, "3").metrics["test_acc"]
    assert metadata["preprocessing"]["mean"] == pytest.approx(0.1307)
    assert metadata["params"]["train.seed"] == "3"

    folder = registry.download_model(registry.get_version(None, "3"), tmp_path)
    pyfunc = mlflow.pyfunc.load_model(str(folder))
    x = torch.cat([xb for xb, _ in store.test_batches()])[:1000]
    with torch.inference_mode():
        bento_out = net(x).numpy()
    np.testing.assert_allclose(bento_out, pyfunc.predict(x.numpy()), atol=1e-5)


@pytest.mark.slow
def test_a_damaged_import_is_replaced(store):
    registry = store.registry
    first = import_version("1", registry=registry)
    Path(bentoml.models.get(first.tag).path_of(WEIGHTS_FILE)).write_bytes(b"half a file")
    with pytest.raises(ValueError, match="damaged"):
        load_bento_mlp(first.tag)
    repaired = import_version("1", registry=registry)
    assert repaired.created and repaired.tag == first.tag
    load_bento_mlp(repaired.tag)


# --- an unreachable registry --------------------------------------------------------------------------------


def test_an_unreachable_server_is_reported_as_such(monkeypatch):
    from benchmarks.process import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    registry = Registry(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RegistryUnavailableError, match="cannot be reached"):
        registry.list_models()
    with pytest.raises(RegistryUnavailableError):
        registry.get_version("mnist-mlp", "champion")


def test_the_embedded_store_is_created_on_first_use(_isolated_home):
    registry = Registry()
    assert registry.list_models() == []
    assert (_isolated_home / "mlflow" / "mlflow.db").is_file()
    assert isinstance(registry.client, MlflowClient)


# --- the parts, without training ----------------------------------------------------------------------------


def _version(number: str, aliases: tuple[str, ...] = (), **fields) -> VersionInfo:
    now = datetime.now(timezone.utc)
    return VersionInfo(
        name="m", version=number, aliases=list(aliases), status="READY", created_at=now, updated_at=now,
        tags=fields.pop("tags", {}), run_id=None, **fields,
    )  # fmt: skip


def test_the_filter_language():
    versions = [
        _version("1", metrics={"test_acc": 0.91}, params={"data.seed": "1"}),
        _version("2", ("challenger",), metrics={"test_acc": 0.99}, tags={"mindtrace.gate.decision": "no"}),
        _version("10", ("champion", "stable"), metrics={"test_acc": 0.985}),
        _version("3"),  # a run that logged no metrics
    ]

    def select(*where: str, order_by: str | None = None) -> list[str]:
        conditions = [parse_condition(w) for w in where]
        chosen = [v for v in versions if all(c(v) for c in conditions)]
        return [v.version for v in order(chosen, *parse_order(order_by))]

    assert select() == ["10", "3", "2", "1"]  # newest first, version numbers as numbers
    assert select(order_by="version asc") == ["1", "2", "3", "10"]
    assert select(order_by="metrics.test_acc desc") == ["2", "10", "1", "3"]  # missing values last...
    assert select(order_by="metrics.test_acc asc") == ["1", "10", "2", "3"]  # ...either way
    assert select("metrics.test_acc >= 0.985") == ["10", "2"]
    assert select("metrics.test_acc>0.9", "version<10") == ["2", "1"]
    assert select("alias = champion") == select("alias == stable") == ["10"]
    assert select("alias != champion") == ["3", "2", "1"]
    assert select("alias > champion") == []  # aliases compare for (in)equality only
    assert select("params.data.seed = '1'") == ["1"]  # quotes around a value are dropped
    assert select("tags.mindtrace.gate.decision=no") == ["2"]
    assert select("status = READY") == ["10", "3", "2", "1"]
    assert select("metrics.no_such_metric > 0") == []
    for bad in ("test_acc > 1", "metrics. > 1", "metrics.test_acc ~ 1", "nonsense", ""):
        with pytest.raises(InvalidQueryError):
            parse_condition(bad)
    for bad in ("version sideways", "version asc again", "accuracy desc"):
        with pytest.raises(InvalidQueryError):
            parse_order(bad)
    assert field_value(versions[2], "created_at") == versions[2].created_at.isoformat()
    assert sort_key("9") < sort_key("10") < sort_key("abc")


def test_the_filter_language_and_the_errors_import_without_mlflow():
    # The CLI imports the errors at startup; MLflow takes seconds to import.
    code = "import sys, mindtrace.registry.errors, mindtrace.registry.filters; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("RESOURCE_DOES_NOT_EXIST", NotFoundError),
        ("NOT_FOUND", NotFoundError),
        ("INVALID_PARAMETER_VALUE", InvalidQueryError),
        ("BAD_REQUEST", InvalidQueryError),
        ("TEMPORARILY_UNAVAILABLE", RegistryUnavailableError),
        ("DEADLINE_EXCEEDED", RegistryUnavailableError),
        ("ENDPOINT_NOT_FOUND", RegistryUnavailableError),
        ("UNAUTHENTICATED", RegistryUnavailableError),
        ("RESOURCE_ALREADY_EXISTS", ConflictError),
        ("INTERNAL_ERROR", RegistryError),
    ],
)
def test_mlflow_error_codes_map_to_registry_errors(code, kind):
    # The message says "not found" every time: only the code decides.
    said = "Model Version (name=m, version=9) not found"
    served = RestException({"error_code": code, "message": said})  # as a tracking server answers
    embedded = MlflowException(said, error_code=ErrorCode.Value(code))  # as the SQLite store raises
    for exc in (served, embedded):
        with pytest.raises(RegistryError) as caught, mlflow_errors("model 'm' has no version 9"):
            raise exc
        assert type(caught.value) is kind
        if kind is NotFoundError:
            assert str(caught.value) == "model 'm' has no version 9"
        elif kind is RegistryUnavailableError:
            assert str(caught.value) == f"the registry cannot be reached: {exc}"
        else:
            assert str(caught.value) == str(exc)


def test_the_error_table_names_real_mlflow_codes():
    assert set(ERROR_CODES) <= set(ErrorCode.keys())


def test_a_failed_connection_is_unavailable_though_mlflow_calls_it_an_internal_error():
    # What mlflow/utils/rest_utils.py does when requests gives up: a refused connection or a read timeout
    # (``except Exception``) and a connect timeout (``from``), all with the code INTERNAL_ERROR.
    def refused():
        try:
            raise requests.exceptions.ConnectionError("Max retries exceeded")
        except Exception as e:
            raise MlflowException(f"API request to http://127.0.0.1:1/api failed with exception {e}")  # noqa: B904

    def timed_out():
        raise MlflowException("API request failed with timeout exception") from requests.exceptions.Timeout()

    for fail in (refused, timed_out):
        with pytest.raises(RegistryUnavailableError, match="cannot be reached"), mlflow_errors("gone"):
            fail()
    with pytest.raises(RegistryUnavailableError, match="cannot be reached"), mlflow_errors("gone"):
        raise ConnectionRefusedError("a database file behind a dead mount")
    with pytest.raises(RegistryError) as caught, mlflow_errors("gone"):
        raise MlflowException("API request to http://127.0.0.1:1/api failed")  # the server's own failure
    assert type(caught.value) is RegistryError


ACCEPTED_ALIASES = ("champion", "challenger-2", "_staging", "Prod_v2", "a" * 255)
REFUSED_ALIASES = ("latest", "Latest", "v3", "V12", "42", "3a", "-x", "", "a b", "a/b", "ok\n", "a" * 256)


@pytest.mark.parametrize("alias", ACCEPTED_ALIASES + REFUSED_ALIASES)
def test_alias_names_are_checked_at_least_as_strictly_as_mlflow(alias):
    try:
        check_alias(alias)
    except InvalidQueryError:
        assert alias not in ACCEPTED_ALIASES
    else:
        assert alias in ACCEPTED_ALIASES
        _validate_model_alias_name(alias)  # MLflow takes it too
        _validate_model_alias_name_reserved(alias)


def test_rollback_replays_the_alias_log_as_a_stack():
    log: list[AliasEvent] = []
    current, targets = None, []

    def move(action: str, version: str | None) -> None:
        nonlocal current
        now = datetime.now(timezone.utc)
        log.append(AliasEvent(alias="champion", version=version, previous=current, action=action, at=now))
        current = version

    for version in ("1", "2", "3", "4"):
        move("set", version)
    for step in ("rollback", "rollback", "4", "rollback", "rollback", "rollback"):
        if step != "rollback":
            move("set", step)
            continue
        targets.append(rollback_target(log))
        if targets[-1] is not None:
            move("rollback", targets[-1])
    assert targets == ["3", "2", "2", "1", None]


def test_the_embedded_store_raises_the_codes_the_registry_expects():
    registry = Registry()
    client = registry.client
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", "file:///nowhere/model")  # no run: nothing to train

    def code(call) -> str:
        with pytest.raises(MlflowException) as caught:
            call()
        return caught.value.error_code

    assert code(lambda: client.get_registered_model("nope")) == "RESOURCE_DOES_NOT_EXIST"
    assert code(lambda: client.get_model_version("m", "42")) == "RESOURCE_DOES_NOT_EXIST"
    assert code(lambda: client.get_model_version_by_alias("m", "staging")) == "INVALID_PARAMETER_VALUE"
    assert code(lambda: client.set_registered_model_alias("m", "latest", "1")) == "INVALID_PARAMETER_VALUE"

    with pytest.raises(NotFoundError, match="no registered model named 'nope'; registered models: m"):
        registry.get_version("nope", "1")
    with pytest.raises(NotFoundError, match="has no version 42; versions: 1, 2; aliases: none"):
        registry.get_version("m", 42)
    with pytest.raises(NotFoundError, match="has no alias 'staging'"):
        registry.get_version("m", "staging")
    with pytest.raises(InvalidQueryError, match="invalid alias"):
        registry.set_alias("m", "v2", "2")

    registry.set_alias("m", "champion", "1")
    registry.set_alias("m", "champion", 2, reason="better")
    assert registry.alias_target("m") == "2" and registry.get_version("m").aliases == ["champion"]
    registry.remove_alias("m", "champion")
    assert registry.alias_target("m") is None
    assert registry.rollback("m").version == "2"
    assert [(e.action, e.version) for e in registry.alias_history("m")] == [
        ("set", "1"), ("set", "2"), ("remove", None), ("rollback", "2"),
    ]  # fmt: skip
    assert registry.list_models()[0].tags == {}  # the log stays out of listings


def _accepted(parse, text: str) -> bool:
    try:
        parse(text)
    except InvalidQueryError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.from_regex(CONDITION_PATTERN) | st.text(max_size=30) | st.sampled_from(["version=1\n", "x=1"]))
def test_the_documented_filter_pattern_admits_exactly_what_the_parser_accepts(text):
    # The OpenAPI document publishes CONDITION_PATTERN; the registry parses with its own regex and key check.
    assert bool(re.search(CONDITION_PATTERN, text)) == _accepted(parse_condition, text), repr(text)


@settings(max_examples=300, deadline=None)
@given(st.from_regex(ORDER_PATTERN) | st.text(max_size=30) | st.sampled_from(["", "  ", "version DESC"]))
def test_the_documented_ordering_pattern_admits_exactly_what_the_parser_accepts(text):
    assert bool(re.search(ORDER_PATTERN, text)) == _accepted(parse_order, text), repr(text)


# --- a staged rollout's state in the registry ---------------------------------------------------------------


@pytest.mark.slow
def test_a_rollout_lives_in_the_registry_and_ends_once(store):
    from mindtrace.rollout import RolloutRequest, current, finish, start

    registry, name = store.registry, _copy_model(store, 3)
    request = RolloutRequest(version="2", mode="canary", percent=10)
    with pytest.raises(ConflictError, match="no champion"):
        start(registry, name, request)
    registry.set_alias(name, "champion", "1")
    with pytest.raises(InvalidQueryError, match="champion already"):
        start(registry, name, request.model_copy(update={"version": "champion"}))

    rollout = start(registry, name, request, actor="tester")
    assert (rollout.champion, rollout.candidate, rollout.status) == ("1", "2", "running")
    assert current(registry, name) == rollout and registry.alias_target(name, "challenger") == "2"
    with pytest.raises(ConflictError, match=f"rollout {rollout.id}"):
        start(registry, name, request.model_copy(update={"version": "3"}))

    ended, changed = finish(registry, name, rollout.id, "promoted", "better on every count", actor="tester")
    assert changed and ended.status == "promoted" and ended.ended_by == "tester"
    assert (
        registry.alias_target(name, "champion") == "2" and registry.alias_target(name, "challenger") is None
    )
    assert registry.get_version(name, "2").tags["mindtrace.rollout.status"] == "promoted"
    # A second decision (another replica's, a person's stop) changes nothing.
    again, changed = finish(registry, name, rollout.id, "rolled-back", "late", actor="other replica")
    assert not changed and again.status == "promoted" and current(registry, name).status == "promoted"
    # The champion's moves are in the alias log, so a rollback of the promotion is exact.
    assert registry.rollback(name, "champion").version == "1"

    second = start(registry, name, request.model_copy(update={"version": "3", "mode": "shadow"}))
    assert second.percent == 10 and second.mode == "shadow"
    ended, changed = finish(registry, name, second.id, "rolled-back", "worse")
    assert changed and registry.alias_target(name, "champion") == "1"
    assert registry.alias_target(name, "challenger") is None
    assert registry.get_version(name, "3").tags["mindtrace.rollout.reason"] == "worse"


FIRST_CALLS = """
import importlib.util, sys, threading, time

real_find_spec = importlib.util.find_spec


def slow_find_spec(name, *args, **kwargs):
    if name == "sqlalchemy":  # MLflow asks while it fills its table of stores, published already
        time.sleep(0.5)
    return real_find_spec(name, *args, **kwargs)


importlib.util.find_spec = slow_find_spec
from mindtrace.registry import Registry

errors = []


def first_call():
    try:
        Registry(tracking_uri=sys.argv[1]).list_models()
    except Exception as exc:
        errors.append(repr(exc))


threads = [threading.Thread(target=first_call) for _ in range(2)]
threads[0].start()
time.sleep(0.1)
threads[1].start()
for thread in threads:
    thread.join()
print(errors)
sys.exit(1 if errors else 0)
"""


def test_first_registry_calls_from_several_threads_all_succeed(tmp_path):
    # MLflow publishes its table of registry stores before filling it; a serving worker's first registry
    # requests, arriving together, once met it half-filled ("Model Registry features are not supported by the
    # store"). The window is widened here so that the race happens every time without the client lock.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MINDTRACE_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-c", FIRST_CALLS, uri], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
