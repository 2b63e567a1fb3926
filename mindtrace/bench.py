"""Benchmarks that print figures. Targets are reported, not asserted: a noisy machine must not fail CI."""

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
