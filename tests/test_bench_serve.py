"""The serving benchmark end to end, in miniature: every server really started, checked, loaded by wrk and
stopped; and the harness's own docstring examples.

The figures of so short a run mean nothing; what is checked is that each server answered right, that wrk's
figures, the memory of each process and the cold starts were recorded, that the report and charts were
written, and that no server outlived the run.
"""

from __future__ import annotations

import doctest
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HARNESS = sorted(f"benchmarks.{p.stem}" for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__main__")


@pytest.mark.parametrize("name", HARNESS)
def test_harness_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed (apt-get install wrk)")
def test_bench_serve_measures_every_server_and_writes_the_report(tmp_path, real_mnist_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINDTRACE", "BENTOML"))}
    env.update(
        MINDTRACE_HOME=str(tmp_path / "user-home"), MINDTRACE__DIR_PATHS__DATA=str(real_mnist_dir.parent)
    )
    # As in CI: the environment is not activated, so its tools are not on PATH.
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != BIN)
    out, work = tmp_path / "bench", tmp_path / "work"
    command = [
        str(BIN / "mindtrace"), "bench", "serve", "--out", str(out), "--work", str(work),
        "--markdown", str(tmp_path / "BENCH.md"),
        "--connections", "2", "4", "--seconds", "2", "--rounds", "1",
        "--warmup-seconds", "1", "--digits", "100", "--batch-images", "8", "--batch-connections", "2",
        "--soak-seconds", "4", "--cold-starts", "1", "--workers", "2", "--epochs", "1", "--num-train", "3000",
        "--hidden-dims", "32",
    ]  # fmt: skip
    # A report written over BENCHMARKS.md keeps the other benchmarks' sections, and only those.
    (tmp_path / "BENCH.md").write_text("# Old\n## Targets\nstale\n## Drift detection\nkept\n")
    before = {p.pid for p in psutil.process_iter()}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    servers = results["servers"]
    working = ("mindtrace", "mindtrace-nobatch", "fastapi", "mlflow")
    assert set(servers) == {*working, "mindtrace no-op", "fastapi no-op", "mlflow no-op"}
    for name, server in servers.items():
        assert server["note"] == "", (name, server["note"])  # it started
        for moment in ("loaded", "after load"):
            processes = server["memory"][moment]
            assert [p["role"] for p in processes].count("supervisor") == 1, processes
            assert sum(p["role"] == "worker" for p in processes) == 2, processes  # --workers: one per core
            assert all(p["pid"] > 0 and p["rss_mb"] > 10 for p in processes), processes
    for name in working:  # 100 single digits, 13 batches of 8, and the service's 100 V2 requests
        checked = 100 + 104 + (100 if name == "mindtrace" else 0)
        assert servers[name]["correct"]["same"] == servers[name]["correct"]["checked"] == checked, name

    measured = {(r["server"], r["scenario"], r["connections"]) for r in results["medians"]}
    for name in servers:
        assert {(name, "single", 2), (name, "single", 4)} <= measured
    assert {("mindtrace", "batch", 2), ("fastapi", "batch", 2), ("mlflow", "batch", 2)} <= measured
    assert ("mindtrace", "retrain", 4) in measured and ("mindtrace", "v2", 4) in measured
    for point in results["points"]:
        wrk = point["wrk"]
        expected = wrk["statuses"].get("4xx", 0)  # the long run's client mistakes, each answered with a 4xx
        assert wrk["requests"] > 0 and sum(wrk["errors"].values()) == expected, point
        assert wrk["p50_ms"] <= wrk["p99_ms"] <= wrk["max_ms"] and wrk["cpu"] > 0, point
        assert point["server_cpu"] > 0 and point["server_rss_mb"] > 50, point
    soak = next(p["wrk"] for p in results["points"] if p["scenario"] == "soak")  # mixed traffic, counted
    assert soak["statuses"]["5xx"] == 0 and soak["statuses"]["2xx"] > 0 and soak["statuses"]["4xx"] > 0, soak
    assert "succeeded" in done.stdout  # the retraining job ran to its end while it was measured
    assert [len(results["cold_start"][name]) for name in ("mindtrace", "fastapi")] == [1, 1]
    assert all(0 < seconds < 300 for seconds in results["cold_start"]["mindtrace"])

    report = (tmp_path / "BENCH.md").read_text()
    for heading in ("## Targets", "### 2 connections", "### 4 connections", "## Batch requests", "## Memory",
                    "## The Open Inference Protocol beside /inference",
                    "## Cold start", "## Correctness pass", "retraining job", "## Reproduce"):  # fmt: skip
        assert heading in report
    assert "cold start to /readyz 200" in report and "supervising process" in report
    assert report.endswith("\n## Drift detection\nkept\n") and "stale" not in report
    assert "s of mixed traffic at 4 connections: 0 5xx | 0 5xx, 0 socket errors" in report
    for chart in ("throughput.png", "latency.png", "memory.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(bench/{chart})" in report  # linked relative to the markdown file

    # Every server was stopped: no process started during the run is left.
    left = [p for p in psutil.process_iter(["cmdline"]) if p.pid not in before]
    assert not [p for p in left if any(str(tmp_path) in part for part in (p.info["cmdline"] or []))]
    started = {p["pid"] for s in servers.values() for moment in s["memory"].values() for p in moment}
    assert not [pid for pid in started if psutil.pid_exists(pid) and pid not in before]
