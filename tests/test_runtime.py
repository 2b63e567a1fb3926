"""The serving runtime: the ONNX graph computes what the PyTorch model computes, on real digits, and nothing
else may enter the BentoML store; what the service's supervising process imports stays light."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import bentoml
import numpy as np
import pytest
import torch

from mindtrace.data.digits import mnist_test_pixels
from mindtrace.models.net import MLPNet, onnx_bytes, probabilities
from mindtrace.registry.bento import (
    ONNX_FILE,
    RUNTIME_CHECK_DIGITS,
    RUNTIME_TOLERANCE,
    import_version,
    load_bento_mlp,
    load_classifier,
)
from mindtrace.runtime import OnnxClassifier

ROOT = Path(__file__).resolve().parent.parent
# What serving must never load: training, plotting, the benchmark, and (in the supervisor) any model runtime.
TRAINING_AND_TOOLS = {"pytorch_lightning", "lightning", "matplotlib", "locust", "benchmarks"}


def test_the_onnx_graph_gives_pytorchs_probabilities_on_real_digits(real_mnist_dir):
    torch.manual_seed(0)
    net = MLPNet([784, 64, 32, 10]).eval()
    pixels, labels = mnist_test_pixels(1000, real_mnist_dir)
    expected, served = probabilities(net, pixels), OnnxClassifier(onnx_bytes(net))(pixels)
    assert served.dtype == np.float32 and served.shape == (1000, 10)
    assert np.abs(expected - served).max() <= RUNTIME_TOLERANCE
    assert (expected.argmax(1) == served.argmax(1)).all()
    # Any batch size, one image included, and more images than one call takes at once.
    assert OnnxClassifier(onnx_bytes(net))(pixels[:1]).shape == (1, 10)
    many = np.concatenate([pixels] * 5)  # 5,000 images, CHUNK (256) a call
    assert np.abs(OnnxClassifier(onnx_bytes(net))(many) - probabilities(net, many)).max() <= RUNTIME_TOLERANCE


@pytest.fixture(scope="module")
def registered(tmp_path_factory, real_mnist_dir):
    """One tiny registered version in a home of this module's own."""
    from mindtrace.config import Config
    from mindtrace.train import train_and_register
    from mindtrace.train_config import TrainRequest

    home = tmp_path_factory.mktemp("runtime-home")
    config = Config(
        env={
            "MINDTRACE_HOME": str(home),
            "MINDTRACE__DIR_PATHS__DATA": str(real_mnist_dir.parent),
            "MINDTRACE__MNIST__SOURCES": "local",
        }
    )
    request = TrainRequest(epochs=1, num_train=3000, num_val=500, hidden_dims=[32], promotion="always")
    summary = train_and_register(request, settings=config, progress=False)
    return config, summary["registered_version"]


@pytest.mark.slow
def test_import_checks_the_graph_on_1000_real_digits_and_serving_loads_it(registered, real_mnist_dir):
    config, version = registered
    result = import_version(version, config=config)
    model = bentoml.models.get(result.tag)
    check = model.info.metadata["runtime_check"]
    assert check["digits"] == RUNTIME_CHECK_DIGITS and check["same_labels"] == RUNTIME_CHECK_DIGITS
    assert 0 <= check["max_abs_diff"] <= RUNTIME_TOLERANCE

    classify, _ = load_classifier(result.tag)
    net, _ = load_bento_mlp(result.tag)
    pixels, _ = mnist_test_pixels(500, real_mnist_dir)
    assert np.abs(classify(pixels) - probabilities(net, pixels)).max() <= RUNTIME_TOLERANCE

    # A damaged graph is refused at load, never served.
    graph = Path(model.path_of(ONNX_FILE))
    graph.write_bytes(graph.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="damaged"):
        load_classifier(result.tag)
    # Importing again finds the damage and replaces the entry with a sound one.
    assert import_version(version, config=config).created is True
    load_classifier(result.tag)


@pytest.mark.slow
def test_a_graph_that_computes_something_else_never_enters_the_store(registered, monkeypatch):
    config, version = registered
    from mindtrace.registry.bento import bento_tag
    from mindtrace.registry.query import Registry

    tag = bento_tag(Registry(config=config).get_version(None, version))
    bentoml.models.delete(tag)
    # An exporter that got the weights wrong: another network of the same shape.
    monkeypatch.setattr("mindtrace.models.net.onnx_bytes", lambda net: onnx_bytes(MLPNet(net.dim)))
    with pytest.raises(ValueError, match="differs from the PyTorch model"):
        import_version(version, config=config)
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.models.get(tag)


@pytest.mark.slow
def test_serving_waits_for_an_import_in_progress_rather_than_read_an_entry_half_copied(registered):
    # BentoML copies a new entry's files into its store folder in place: a worker that swaps in a version
    # while a retraining job imports it could read a model.yaml half-written. Serving's loads wait for the
    # import's lock instead; an entry that is read half-written anyway is "damaged", never a YAML error.
    from mindtrace.registry.bento import store_lock
    from mindtrace.registry.query import Registry
    from service.watcher import load_stored

    config, version = registered
    registry = Registry(config=config)
    name = registry.model_name(None)
    tag = import_version(version, config=config).tag
    spec = Path(bentoml.models.get(tag).path_of("model.yaml"))
    whole = spec.read_text()
    loaded: list = []
    with store_lock(config):  # an import under way, halfway through BentoML's copy
        spec.write_text(whole[: len(whole) // 2])
        with pytest.raises(ValueError, match="damaged"):
            load_classifier(tag)  # a reader that does not wait sees a damaged entry, and says so
        reader = threading.Thread(target=lambda: loaded.append(load_stored(name, version, registry)))
        reader.start()
        reader.join(1.0)
        assert reader.is_alive() and not loaded  # waiting for the import, not reading
        spec.write_text(whole)
    reader.join(30)
    assert [(served.name, served.version) for served in loaded] == [(name, version)]


def test_the_supervising_process_imports_no_model_runtime_and_nothing_from_training(tmp_path):
    # What BentoML's supervisor does: import the service module and read the service from it.
    probe = """
import json, resource, sys
import service
service.svc
top = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"modules": top, "count": len(sys.modules),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
    env = {"MINDTRACE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"importing the service: {loaded['count']} modules, {loaded['rss_mb']:.0f} MB")
    forbidden = TRAINING_AND_TOOLS | {"torch", "onnxruntime", "mlflow", "pandas", "scipy"}
    assert not forbidden & set(loaded["modules"])
    assert "bentoml" in loaded["modules"]  # the probe did import the service
