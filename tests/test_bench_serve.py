"""``mindtrace bench serve`` end to end, in miniature: every server really started, loaded and stopped.

The figures of so short a run mean nothing; what is checked is that each server answered every request
right, that the report and charts were written, and that no server outlived the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_bench_serve_measures_every_server_and_writes_the_report(tmp_path, real_mnist_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINDTRACE", "BENTOML"))}
    env.update(
        MINDTRACE_HOME=str(tmp_path / "user-home"), MINDTRACE__DIR_PATHS__DATA=str(real_mnist_dir.parent)
    )
    # As in CI: the environment is not activated, so its tools are not on PATH.
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != BIN)
    out = tmp_path / "bench"
    command = [
        str(BIN / "mindtrace"), "bench", "serve", "--out", str(out), "--markdown", str(tmp_path / "BENCH.md"),
        "--users", "2", "4", "--seconds", "3", "--warmup-seconds", "1", "--digits", "100",
        "--ceiling-users", "4", "--batch-images", "8", "--batch-users", "2", "--soak-seconds", "4",
        "--epochs", "1", "--num-train", "3000", "--hidden-dims", "32",
    ]  # fmt: skip
    before = {p.pid for p in psutil.process_iter()}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    measured = {(r["server"], r["scenario"], r["users"]) for r in runs}
    for server in ("mindtrace", "mindtrace-nobatch", "fastapi", "mlflow"):
        assert {(server, "single", 2), (server, "single", 4)} <= measured
    for server in ("mindtrace no-op", "fastapi no-op", "mlflow no-op"):
        assert (server, "ceiling", 4) in measured
    assert {("mindtrace", "batch", 2), ("mindtrace", "retrain", 4), ("mindtrace", "soak", 4)} <= measured
    for r in runs:
        assert r["requests"] > 0 and r["failures"] == 0, r
        assert r["server_cpu"] > 0 and r["server_rss_mb"] > 50 and r["loadgen_cpu"] > 0, r
        if not r["server"].endswith("no-op"):
            assert r["same_as_offline"] == 1.0, r  # every server gave the model's own answers
    assert "succeeded" in done.stdout  # the retraining job ran to its end while it was measured

    report = (tmp_path / "BENCH.md").read_text()
    for heading in (
        "## Targets",
        "## Single images",
        "no-op endpoint",
        "## Batch requests",
        "retraining job",
    ):
        assert heading in report
    assert "FastAPI + uvicorn" in report and "mlflow models serve" in report
    for chart in ("throughput.png", "latency.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(bench/{chart})" in report  # linked relative to the markdown file

    # Every server was stopped: no process started during the run is left.
    left = [p for p in psutil.process_iter(["cmdline"]) if p.pid not in before]
    assert not [p for p in left if any(str(out) in part for part in (p.info["cmdline"] or []))]
