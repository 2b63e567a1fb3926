"""``mindtrace rollout start|status|stop``, run as users run it: the installed console script in a subprocess,
against a registry of two small versions trained by the real CLI (1 the champion, 2 not promoted).

The tests share one registry and run in file order: a canary of version 2 starts, is looked at, is stopped,
and then starts that must be refused are tried.
"""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mindtrace.config import Config
from mindtrace.monitoring import latency
from mindtrace.monitoring.store import PredictionLog, Stats, log_path
from mindtrace.registry import Registry
from mindtrace.rollout import Rollout, current
from tests.helpers import BIN, service_env, train

pytestmark = pytest.mark.slow


@dataclass
class Setup:
    env: dict[str, str]
    root: Path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``mindtrace ARGS`` in this registry's environment; a failure's output in the assertion."""
        command = [str(BIN / "mindtrace"), *args]
        done = subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=300, cwd=self.root
        )
        if check:
            assert done.returncode == 0, done.stdout + done.stderr
        return done

    def config(self) -> Config:
        return Config(env={k: v for k, v in self.env.items() if k.startswith("MINDTRACE")})

    @functools.cached_property
    def registry(self) -> Registry:
        # Read in this process: each `mindtrace` call spends seconds importing MLflow, the commands under
        # test are the only ones worth that.
        return Registry(config=self.config())

    def rollout(self) -> Rollout | None:
        return current(self.registry)

    def aliases(self) -> dict[str, str]:
        targets = {a: self.registry.alias_target(None, a) for a in ("champion", "challenger")}
        return {a: v for a, v in targets.items() if v is not None}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, real_mnist_dir: Path) -> Setup:
    """Version 1 promoted to champion, version 2 registered beside it, both by ``mindtrace train``."""
    root = tmp_path_factory.mktemp("rollout-cli")
    env = service_env(root / "home", real_mnist_dir.parent, root / "bentoml")
    assert train(env, root, "--policy", "always")["promoted"] is True
    assert train(env, root, "--policy", "never")["promoted"] is False
    return Setup(env, root)


@pytest.fixture(scope="module")
def canary(setup: Setup) -> subprocess.CompletedProcess:
    """``mindtrace rollout start 2 --mode canary --percent 10``, once for the module."""
    return setup.run("rollout", "start", "2", "--mode", "canary", "--percent", "10", "--min-requests", "50")


def test_start_records_a_canary_and_points_challenger_at_it(setup, canary):
    out = canary.stdout
    assert "started" in out and "canary" in out and "10 %" in out and "swap interval" in out
    rollout = setup.rollout()
    assert (rollout.status, rollout.mode, rollout.percent) == ("running", "canary", 10.0)
    assert (rollout.candidate, rollout.champion) == ("2", "1")
    assert rollout.id in out
    # The option given overrides its [ROLLOUT] default; the others keep theirs.
    assert rollout.criteria.min_requests == 50 and rollout.criteria.min_labels == 200
    assert setup.aliases() == {"champion": "1", "challenger": "2"}
    # Imported before it started, so a service's workers (no torch) can load the candidate at once.
    assert "version 2 imported into the BentoML store" in out
    assert list((setup.root / "bentoml" / "models").glob("*/v2-*/model.yaml"))


def test_a_second_start_is_refused_naming_the_running_rollout(setup, canary):
    rollout = setup.rollout()
    done = setup.run("rollout", "start", "2", check=False)
    assert done.returncode == 1
    assert "error:" in done.stdout and rollout.id in done.stdout and "Traceback" not in done.stderr
    assert setup.rollout() == rollout


def test_status_shows_the_evidence_from_the_prediction_log(setup, canary):
    rollout = setup.rollout()  # its model is the configured default, which the commands used
    store = PredictionLog(log_path(setup.config()))
    seconds = np.full(40, 0.004)
    store.write_stats(
        [
            Stats(rollout.id, rollout.model, "1", "answer", 90, 90, 0, 0, latency.histogram(seconds[:36])),
            Stats(rollout.id, rollout.model, "2", "answer", 10, 12, 1, 0, latency.histogram(seconds[:4])),
        ]
    )
    rollout = Rollout.model_validate_json(setup.run("rollout", "status", "--json").stdout)
    evidence = rollout.evidence  # gathered now: the stored state of a running rollout has none
    assert evidence is not None and rollout.status == "running"
    assert (evidence.champion.requests, evidence.candidate.requests, evidence.candidate.errors) == (90, 10, 1)
    assert evidence.share == pytest.approx(0.1) and evidence.candidate.p99_ms is not None
    out = setup.run("rollout", "status").stdout
    assert "running" in out and "p99 ms" in out
    assert re.search(r"champion\s*│\s*1\s*│\s*90\b", out) and re.search(r"candidate\s*│\s*2\s*│\s*10\b", out)
    assert "10.00%" in out  # the observed share


def test_stop_aborts_it_and_takes_challenger_off(setup, canary):
    running = setup.rollout()
    stopped = Rollout.model_validate_json(setup.run("rollout", "stop", "--json").stdout)
    assert (stopped.id, stopped.status, stopped.reason) == (running.id, "aborted", "stopped by a person")
    assert stopped.evidence is not None and stopped.evidence.candidate.requests == 10
    assert stopped.ended_by and stopped.ended_by != "api"
    assert setup.rollout().status == "aborted"
    assert setup.aliases() == {"champion": "1"}
    # Stopping again changes nothing and is no error: it shows the last rollout.
    again = setup.run("rollout", "stop")
    assert "no rollout" in again.stdout and "aborted" in again.stdout
    assert setup.rollout().ended_at == stopped.ended_at


@pytest.mark.parametrize(
    ("options", "status", "says"),
    [
        (["1"], 2, "version 1 is the champion already"),
        (["99"], 1, "99"),
        (["2", "--percent", "150"], 2, "invalid percent"),
    ],
    ids=["champion", "unknown", "bad-option"],
)
def test_refused_starts_leave_the_registry_alone(setup, canary, options, status, says):
    """Exit 2 for input that cannot be right (as for an invalid registry query), 1 for an unknown version."""
    # After the stop above no rollout runs, so each start meets its own refusal, not the running rollout's.
    done = setup.run("rollout", "start", *options, check=False)
    assert done.returncode == status, done.stdout + done.stderr
    assert says in done.stdout and "Traceback" not in done.stderr
    assert setup.rollout().status == "aborted"
    assert setup.aliases() == {"champion": "1"}


def test_a_candidate_deleted_during_its_rollout_is_rolled_back_rather_than_promoted(setup, canary):
    from mindtrace.rollout import RolloutRequest, finish, start

    registry, name = setup.registry, setup.registry.default_name
    copied = registry.client.get_model_version(name, "2")
    gone = registry.register(copied.run_id, copied.source).version
    rollout = start(registry, None, RolloutRequest(version=gone))
    registry.delete_version(None, gone)
    ended, changed = finish(registry, None, rollout.id, "promoted", "every check passed")
    assert changed and ended.status == "rolled-back" and f"version {gone} was deleted" in ended.reason
    assert (setup.rollout().id, setup.rollout().status) == (rollout.id, "rolled-back")
    assert setup.aliases() == {"champion": "1"}
