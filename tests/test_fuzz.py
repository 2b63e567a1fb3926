"""Fuzzing from the OpenAPI document: schemathesis against a real ``bentoml serve`` with its tokens set.

Every route is in, the state-changing ones too (retraining, alias moves, rollbacks), in an isolated home
with a model trained by the real CLI. All of schemathesis' checks and phases run (examples, coverage,
fuzzing, and the stateful phase that chains routes), once with a fixed seed and once with a new random seed
that the test prints, so a failure can be replayed with ``st run ... --seed N``. ``tests/schemathesis.toml``
says which refusals no schema can predict (an image string that decodes to no image).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.process import free_port, running

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
API_TOKEN = "fuzz-api-token-41d2"
INFERENCE_TOKEN = "fuzz-inference-token-9c7e"
FIXED_SEED = 20261128


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, real_mnist_dir: Path
) -> Iterator[tuple[str, Path, Path]]:
    """The service on a free port, serving version 1 of a small model; its URL, home and log."""
    root = tmp_path_factory.mktemp("fuzz")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINDTRACE", "BENTOML"))}
    env.update(
        MINDTRACE_HOME=str(root / "home"),
        MINDTRACE__DIR_PATHS__DATA=str(real_mnist_dir.parent),
        MINDTRACE__MNIST__SOURCES="local",
        BENTOML_HOME=str(root / "bentoml"),
        BENTOML_DO_NOT_TRACK="true",
        MINDTRACE_API_TOKEN=API_TOKEN,
        MINDTRACE_INFERENCE_TOKEN=INFERENCE_TOKEN,
    )
    trained = subprocess.run(
        [str(BIN / "mindtrace"), "train", "--epochs", "1", "--num-train", "3000", "--hidden-dims", "32",
         "--policy", "always"],
        env=env, capture_output=True, text=True, timeout=600, cwd=root,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "bentoml"), "serve", "service:svc", "--host", "127.0.0.1", "--port", str(port)]
    try:
        with running(command, url + "/readyz", root / "serve.log", cwd=ROOT, env=env, timeout=180):
            yield url, root / "home", root / "serve.log"
    finally:
        _stop_jobs(root / "home" / "jobs")


def _stop_jobs(jobs: Path) -> None:
    """Retraining jobs run in their own session (a service restart must not kill them): stop the ones the
    fuzzing started, by the pid each recorded."""
    for state_file in jobs.glob("*/state.json"):
        state = json.loads(state_file.read_text())
        if state["status"] in ("queued", "running") and state.get("pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(state["pid"], signal.SIGTERM)


@pytest.mark.parametrize("seed", [FIXED_SEED, random.randrange(1, 2**31)], ids=["fixed-seed", "random-seed"])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(served, seed):
    url, _, log = served
    print(f"schemathesis seed {seed}: replay with `st run {url}/docs.json --seed {seed}`")
    env = {
        **os.environ,
        "MINDTRACE_FUZZ_API_TOKEN": API_TOKEN,
        "MINDTRACE_FUZZ_INFERENCE_TOKEN": INFERENCE_TOKEN,
    }
    done = subprocess.run(
        [str(BIN / "st"), "--config-file", str(ROOT / "tests" / "schemathesis.toml"), "run",
         f"{url}/docs.json", "--checks", "all", "--seed", str(seed), "--max-examples", "40",
         "--workers", "1", "--no-color"],
        env=env, capture_output=True, text=True, timeout=900, cwd=log.parent,  # its cache goes there
    )  # fmt: skip
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, f"seed {seed}:\n{report}"
    assert " passed" in done.stdout and "Stateful" in done.stdout, report  # every phase ran
    assert "Traceback" not in log.read_text()
