"""Benchmarks without a server: full-MNIST training, and the forward pass as each serving option loads it.

Targets are reported, not asserted: a noisy machine must not fail CI.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import mindtrace
from mindtrace.train import TrainConfig, train
from mindtrace.utils import available_cores

TARGET_ACCURACY = 0.98
TARGET_SECONDS = 60.0


def bench_train(config: TrainConfig, repeats: int = 1, json_out: str | None = None) -> int:
    """Train on full MNIST ``repeats`` times (seeds seed, seed+1, ...); print accuracy, time and throughput.

    The one-time data fetch is done first and excluded from the timings.

    >>> bench_train(TrainConfig(), repeats=3)   # doctest: +SKIP
    """
    console = Console()
    runs = []
    for i in range(repeats):
        run_config = config.model_copy(update={"seed": config.seed + i})
        result = train(run_config, progress=False)
        m = result.metrics
        runs.append(
            {
                "seed": run_config.seed,
                "test_acc": m["test_acc"],
                "epochs": int(m["epochs"]),
                "fit_seconds": m["fit_seconds"],
                "images_per_second": m["images_per_second"],
                "fetch_seconds": result.fetch_seconds,
            }
        )
        console.print(f"run {i + 1}/{repeats}: test accuracy {m['test_acc']:.2%} in {m['fit_seconds']:.1f} s")

    table = Table(title=f"full-MNIST training on {available_cores()} cores, torch {torch.__version__}")
    for column in (
        "seed",
        "test accuracy",
        "epochs",
        "fit seconds",
        "images/s",
        "accuracy >= 98%",
        "<= 60 s",
    ):
        table.add_column(column)
    for r in runs:
        table.add_row(
            str(r["seed"]),
            f"{r['test_acc']:.2%}",
            str(r["epochs"]),
            f"{r['fit_seconds']:.1f}",
            f"{r['images_per_second']:,.0f}",
            _verdict(r["test_acc"] >= TARGET_ACCURACY),
            _verdict(r["fit_seconds"] <= TARGET_SECONDS),
        )
    console.print(table)
    if json_out:
        report = {
            "config": config.model_dump(),
            "runs": runs,
            "machine": platform.platform(),
            "cores": available_cores(),
            "torch": torch.__version__,
            "mindtrace": mindtrace.__version__,
        }
        Path(json_out).write_text(json.dumps(report, indent=2))
    return 0


def _verdict(met: bool) -> str:
    return "[green]met[/]" if met else "[red]NOT met[/]"


def bench_model_formats(repeats: int = 2000) -> int:
    """Time one forward pass of the default MLP as each serving option would load it; print a table.

    The options for putting a registered version behind BentoML: the eager ``MLPNet`` rebuilt from weights,
    the ``pt2`` program MLflow loads, the MLflow pyfunc that ``bentoml.mlflow.import_model`` serves through,
    and the ONNX graph that ``import_version`` stores and the service runs. Same weights, one thread. The ONNX
    graph takes uint8 pixels and includes normalisation and softmax; the others take normalized tensors.

    >>> bench_model_formats(repeats=100)   # doctest: +SKIP
    """
    import tempfile
    import time

    import mlflow.pyfunc
    import mlflow.pytorch

    from mindtrace.models.net import MLPNet, onnx_bytes
    from mindtrace.registry.artifacts import load_mlp, save_mlflow_model
    from mindtrace.runtime import OnnxClassifier
    from mindtrace.train_config import DEFAULT_DIM

    torch.set_num_threads(1)
    net = MLPNet(DEFAULT_DIM).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        save_mlflow_model(net, path, torch.randn(2, 1, 28, 28))
        graph = onnx_bytes(net)  # made at import into the store: not part of loading
        options = {}
        # What each takes: pyfunc numpy, as a request body would arrive; ONNX Runtime the raw uint8 pixels.
        for label, takes, load in (
            ("eager MLPNet (mindtrace import)", "tensor", lambda: load_mlp(path)),
            ("pt2 program (mlflow.pytorch)", "tensor", lambda: mlflow.pytorch.load_model(str(path))),
            ("pyfunc (bentoml.mlflow)", "numpy", lambda: mlflow.pyfunc.load_model(str(path))),
            ("ONNX Runtime (the service)", "pixels", lambda: OnnxClassifier(graph)),
        ):
            t0 = time.perf_counter()
            options[label] = (takes, load(), time.perf_counter() - t0)

    table = Table(title=f"one forward pass, median of {repeats} calls, 1 thread")
    for column in ("loaded as", "load ms", "batch 1 µs", "batch 64 µs"):
        table.add_column(column)
    for label, (takes, model, load_seconds) in options.items():
        cells = [label, f"{load_seconds * 1000:.0f}"]
        for batch in (1, 64):
            x = torch.randn(batch, 1, 28, 28)
            pixels = torch.randint(0, 256, (batch, 28, 28), dtype=torch.uint8).numpy()
            inputs = {"tensor": x, "numpy": x.numpy(), "pixels": pixels}[takes]
            call = model.predict if takes == "numpy" else model
            timings = []
            with torch.inference_mode():
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    call(inputs)
                    timings.append(time.perf_counter() - t0)
            cells.append(f"{sorted(timings)[len(timings) // 2] * 1e6:.0f}")
        table.add_row(*cells)
    Console().print(table)
    return 0
