"""Staged rollout against a real ``bentoml serve`` (two workers) and a second replica sharing its registry.

Three versions are trained by the real CLI and the Python API: version 1 (the champion, small: its live
accuracy is well below 1), version 2 (more data, a better model, registered without promotion) and version
3, trained on shuffled labels (a deliberately bad candidate). The service decides every 0.5 s and flushes its
prediction log every 0.2 s, so rollouts end within seconds of their evidence.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.helpers import BIN, random_test_digits, served, service_env, train, wait_for

pytestmark = pytest.mark.slow

TOKEN = "rollout-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Criteria that never decide within a test: what the canary and shadow tests use.
PATIENT = {"min_requests": 1_000_000, "min_labels": 1_000_000, "max_minutes": 600}
# Version 3 on shuffled labels, through the contract's Python API: the callback registers it (gate: never).
BAD_CANDIDATE = """
import numpy as np
from pytorch_lightning import Trainer
from mindtrace.data import MNIST
from mindtrace.data.digits import mnist_test_pixels
from mindtrace.models import MLP
from mindtrace.registry import MlflowLightningCallback
from mindtrace.train_config import PromotionPolicy

pixels, labels = mnist_test_pixels(10_000)
labels = np.random.default_rng(0).permutation(labels)
callback = MlflowLightningCallback(promotion=PromotionPolicy(policy="never"))
trainer = Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_checkpointing=False,
                  enable_progress_bar=False)
trainer.fit(MLP(dim=[784, 32, 10]), MNIST(num_train=100, num_val=500, extra=(pixels, labels)))
print(callback.version.version)
"""


@dataclass
class Service:
    url: str
    env: dict[str, str]
    root: Path
    texts: list[str]  # real test digits, base64 PNG
    labels: np.ndarray

    def rollout(self, method: str = "GET", url: str | None = None, **body) -> requests.Response:
        target = f"{url or self.url}/registry/models/mnist-mlp/rollout"
        return requests.request(
            method, target, json=body if method == "POST" else None, headers=AUTH, timeout=60
        )

    def state(self) -> dict:
        answer = self.rollout()
        assert answer.status_code == 200, answer.text
        return answer.json()

    def classify(self, indices, url: str | None = None, headers: dict | None = None) -> list[dict]:
        """Single-image requests from 8 threads, one session each; the answers in order."""
        local = threading.local()

        def one(i: int) -> dict:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            answer = session.post(
                (url or self.url) + "/inference", json={"image": self.texts[i]}, headers=headers, timeout=60
            )
            assert answer.status_code == 200, answer.text
            return answer.json()

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, indices))

    def versions(
        self, n: int, url: str | None = None, headers: dict | None = None, first: int = 0
    ) -> set[str]:
        """The versions that answered ``n`` requests (test digits ``first`` on)."""
        return {a["model"]["version"] for a in self.classify(range(first, first + n), url, headers)}

    def feedback(self, indices, answers: list[dict]) -> None:
        items = [
            {"prediction_id": a["prediction_id"], "label": int(self.labels[i])}
            for i, a in zip(indices, answers, strict=True)
        ]
        for start in range(0, len(items), 1000):
            answer = requests.post(
                self.url + "/feedback", json={"items": items[start : start + 1000]}, timeout=60
            )
            assert answer.status_code == 202, answer.text

    def champion(self) -> str:
        answer = requests.get(f"{self.url}/registry/models/mnist-mlp/versions/champion", timeout=30)
        return answer.json()["version"]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, real_mnist_dir: Path) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("rollout")
    env = service_env(
        root / "home", real_mnist_dir.parent, root / "bentoml",
        MINDTRACE__SERVICE__WORKERS="2",
        MINDTRACE__SERVICE__ACCESS_LOG="false",
        MINDTRACE__MONITORING__FLUSH_SECONDS="0.2",
        MINDTRACE__ROLLOUT__CHECK_SECONDS="0.5",
        MINDTRACE_API_TOKEN=TOKEN,
    )  # fmt: skip
    assert train(env, root, "--policy", "always")["registered_version"] == "1"
    better = ["--num-train", "20000", "--hidden-dims", "64", "--policy", "never"]
    assert train(env, root, *better)["registered_version"] == "2"
    # Version 2 imported by hand (as `mindtrace rollout start` does); the service imports version 3 itself.
    imported = subprocess.run(
        [str(BIN / "mindtrace"), "registry", "import", "2"],
        env=env,
        cwd=root,
        capture_output=True,
        timeout=600,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    bad = subprocess.run(
        [str(BIN / "python"), "-c", BAD_CANDIDATE],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 0 and bad.stdout.split()[-1] == "3", bad.stderr[-3000:]
    texts, labels = random_test_digits(real_mnist_dir, 2000, seed=3)
    with served(env, root / "serve.log") as (url, _):
        yield Service(url, env, root, texts, labels)


def _started(service: Service, url: str | None = None, **body) -> dict:
    """Start a rollout and wait until the workers serve its candidate (the leader may import it first)."""
    answer = service.rollout("POST", **body)
    assert answer.status_code == 202, answer.text
    rollout = answer.json()

    def serving() -> bool:
        models = [requests.get((url or service.url) + "/model", timeout=30).json() for _ in range(6)]
        return all((m["rollout"] or {}).get("id") == rollout["id"] for m in models)

    wait_for(serving, 180, f"the candidate of rollout {rollout['id']} to serve")
    time.sleep(1.2)  # the other worker follows within its one-second poll
    return rollout


def _stopped(service: Service) -> dict:
    answer = service.rollout("DELETE")
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_canary_answers_its_share_and_every_answer_names_its_version(service):
    started = _started(service, version="2", mode="canary", percent=10, **PATIENT)
    assert (started["status"], started["champion"], started["candidate"]) == ("running", "1", "2")
    second = service.rollout("POST", version="3", mode="canary")
    assert second.status_code == 409 and started["id"] in second.json()["error"]

    answers = service.classify([i % 2000 for i in range(5000)])
    versions = Counter(a["model"]["version"] for a in answers)
    assert set(versions) == {"1", "2"}
    assert 0.08 <= versions["2"] / 5000 <= 0.12, versions

    # The rollout's own count agrees, once every worker has flushed its figures.
    def counted() -> dict | None:
        state = service.state()
        evidence = state["evidence"]
        return state if evidence["champion"]["requests"] + evidence["candidate"]["requests"] >= 5000 else None

    state = wait_for(counted, 10, "the evidence to count every request")
    assert state["evidence"]["share"] == pytest.approx(versions["2"] / 5000, abs=0.005)

    # The inference protocol names the candidate's version too, and answers with it.
    body = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 784], "data": [0] * 784}]}
    v2 = requests.post(f"{service.url}/v2/models/mnist-mlp/versions/2/infer", json=body, timeout=30).json()
    assert v2["model_version"] == "2"
    assert (
        requests.post(
            f"{service.url}/v2/models/mnist-mlp/versions/3/infer", json=body, timeout=30
        ).status_code
        == 404
    )

    stopped = _stopped(service)
    assert stopped["status"] == "aborted" and stopped["reason"] == "stopped by a person"
    time.sleep(1.5)
    assert service.versions(300) == {"1"}
    assert requests.delete(f"{service.url}/registry/models/mnist-mlp/rollout", timeout=30).status_code == 401


def test_a_sticky_canary_gives_each_client_one_version(service):
    _started(service, version="2", mode="canary", percent=50, sticky_header="X-Client-Id", **PATIENT)
    seen = {}
    for client in range(16):
        versions = service.versions(10, headers={"X-Client-Id": f"c{client}"}, first=client * 10)
        assert len(versions) == 1, f"client c{client} saw {versions}"
        seen[client] = versions.pop()
    assert set(seen.values()) == {"1", "2"}
    _stopped(service)


def test_a_shadow_never_answers_and_both_versions_are_logged_and_compared(service):
    _started(service, version="2", mode="shadow", **PATIENT)
    indices = list(range(600))
    answers = service.classify(indices)
    assert {a["model"]["version"] for a in answers} == {"1"}
    service.feedback(indices, answers)
    state = wait_for(
        lambda: (s := service.state())["evidence"]["compared"] >= 590 and s, 10, "the shadow predictions"
    )
    evidence = state["evidence"]
    assert evidence["candidate"]["requests"] >= 590 and 0.3 < evidence["agreement"] < 1
    # Both judged on the same labelled requests: the better version shows it.
    assert evidence["champion"]["labelled"] == evidence["candidate"]["labelled"] >= 590
    truth = service.labels[indices]
    assert evidence["champion"]["accuracy"] == pytest.approx(
        np.mean([a["label"] for a in answers] == truth), abs=0.01
    )
    assert evidence["candidate"]["accuracy"] > evidence["champion"]["accuracy"]
    monitoring = requests.get(f"{service.url}/monitoring", params={"version": "2"}, timeout=30).json()
    assert monitoring["versions"][0]["requests"] >= 590  # its shadow predictions are in the log
    _stopped(service)


def test_a_bad_candidate_is_rolled_back_and_a_better_one_promoted_from_feedback(service):
    quick = {"min_requests": 150, "min_labels": 100, "max_minutes": 10}
    _started(service, version="3", mode="canary", percent=50, **quick)
    indices = list(range(1000, 1400))
    service.feedback(indices, service.classify(indices))
    state = wait_for(lambda: (s := service.state())["status"] != "running" and s, 15, "a decision")
    assert state["status"] == "rolled-back" and "accuracy" in state["reason"], state
    evidence = state["evidence"]
    assert evidence["candidate"]["accuracy"] < 0.3 < evidence["champion"]["accuracy"]
    assert evidence["candidate"]["labelled"] >= 100 and evidence["champion"]["labelled"] >= 100
    tags = requests.get(f"{service.url}/registry/models/mnist-mlp/versions/3", timeout=30).json()["tags"]
    assert (
        tags["mindtrace.rollout.status"] == "rolled-back" and "accuracy" in tags["mindtrace.rollout.reason"]
    )
    assert service.champion() == "1"

    _started(service, version="2", mode="shadow", **quick)
    indices = list(range(1400, 1700))
    service.feedback(indices, service.classify(indices))
    state = wait_for(lambda: (s := service.state())["status"] != "running" and s, 15, "a decision")
    assert state["status"] == "promoted", state
    assert state["evidence"]["candidate"]["accuracy"] >= state["evidence"]["champion"]["accuracy"]
    assert service.champion() == "2"
    wait_for(lambda: service.versions(50) == {"2"}, 10, "version 2")
    metrics = requests.get(f"{service.url}/metrics", timeout=30).text
    assert 'mindtrace_rollout_decisions_total{model="mnist-mlp",outcome="promoted"}' in metrics


def test_64_clients_see_no_failure_through_start_promote_rollback_and_stop(service):
    # Every worker has let the last test's candidate go (within a swap poll of its end), so that only this
    # test's versions answer.
    wait_for(
        lambda: service.versions(100) == {service.champion()}, 15, "the last rollout's candidate to leave"
    )
    stop, failures, answered = threading.Event(), [], Counter()

    def client(k: int) -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                answer = session.post(
                    service.url + "/inference", json={"image": service.texts[k]}, timeout=60
                )
                if answer.status_code != 200:
                    failures.append(answer.status_code)
                else:
                    answered[answer.json()["model"]["version"]] += 1
            except requests.RequestException as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(64)]
    for thread in threads:
        thread.start()
    try:
        champion = service.champion()
        other = "1" if champion == "2" else "2"
        # Promoted on requests, errors and latency alone (no labels asked for): within a second or two.
        # The p99 of a hundred requests is their slowest, often a freshly loaded candidate's first call:
        # a wide margin.
        quick = service.rollout(
            "POST",
            version=other,
            mode="canary",
            percent=50,
            min_requests=100,
            min_labels=0,
            p99_margin_ms=100,
        )
        assert quick.status_code == 202, quick.text
        wait_for(lambda: service.state()["status"] == "promoted", 60, "the promotion")
        # Rolled back: not enough evidence in three seconds.
        late = service.rollout(
            "POST", version=champion, mode="canary", percent=50, min_labels=10**6, max_minutes=0.05
        )
        assert late.status_code == 202, late.text
        wait_for(lambda: service.state()["status"] == "rolled-back", 60, "the rollback")
        _started(service, version=champion, mode="shadow", **PATIENT)
        assert _stopped(service)["status"] == "aborted"
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert failures == [] and sum(answered.values()) > 500, (failures[:5], answered)
    assert service.champion() == other and set(answered) == {"1", "2"}


def test_two_replicas_follow_the_same_rollout_and_a_new_one_resumes_it(service):
    champion = service.champion()
    other = "1" if champion == "2" else "2"
    env = {**service.env, "MINDTRACE__SERVICE__WORKERS": "1"}
    with served(env, service.root / "replica.log") as (replica, _):
        _started(service, version=other, mode="canary", percent=50, **PATIENT)
        wait_for(
            lambda: service.versions(100, replica) == {"1", "2"}, 10, "the replica to serve the candidate"
        )
        assert service.state()["id"] == service.rollout(url=replica).json()["id"]
        stopped = service.rollout("DELETE", url=replica)  # stopped through the replica
        assert stopped.status_code == 200 and stopped.json()["status"] == "aborted"
        wait_for(lambda: service.versions(100) == {champion}, 10, "the first service to drop the candidate")

    # A service started while a rollout runs (a restart) serves it from the start.
    started = _started(service, version=other, mode="canary", percent=50, **PATIENT)
    with served(env, service.root / "restarted.log") as (restarted, _):
        assert service.versions(200, restarted) == {"1", "2"}
        assert requests.get(restarted + "/model", timeout=30).json()["rollout"]["id"] == started["id"]
    _stopped(service)


def test_a_restarted_service_starts_with_what_it_served_last_then_follows_the_registry(service):
    # A starting service serves what its home served last before MLflow's client has loaded, then asks the
    # registry at once: an alias moved while no server ran is followed within seconds. These servers follow
    # an alias of their own, so the module's service (on the champion) is not disturbed.
    env = {**service.env, "MINDTRACE__SERVICE__MODEL_ALIAS": "stable", "MINDTRACE__SERVICE__WORKERS": "1"}

    def move(version: str) -> None:
        answer = requests.post(
            f"{service.url}/registry/models/mnist-mlp/aliases/stable",
            json={"version": version}, headers=AUTH, timeout=60,
        )  # fmt: skip
        assert answer.status_code == 200, answer.text

    move("2")
    with served(env, service.root / "stable-first.log") as (url, _):  # nothing served yet: the registry says
        assert service.versions(40, url) == {"2"}
    move("1")  # while no server runs
    log = service.root / "stable-restarted.log"
    with served(env, log) as (url, _):
        wait_for(lambda: service.versions(40, url) == {"1"}, 30, "the restarted service to follow the alias")
    text = log.read_text()
    assert "started with what was served last" in text
    assert text.index("now serving mnist-mlp version 2") < text.index("now serving mnist-mlp version 1")

    move("2")
    strict = {**env, "MINDTRACE__SERVICE__START_WITH_LAST_SERVED": "false"}
    log = service.root / "stable-strict.log"
    with served(strict, log) as (url, _):
        assert service.versions(40, url) == {"2"}  # ready only once the registry had named the version
    assert "started with what was served last" not in log.read_text()


def test_a_rollout_whose_candidate_is_gone_is_rolled_back_with_the_reason(service):
    # Started from Python behind the service's back, then the candidate deleted before the leader could load
    # it: the leader ends the rollout and says why, rather than asking the registry again at every look.
    from mindtrace.config import Config
    from mindtrace.registry import Registry
    from mindtrace.rollout import RolloutRequest, start

    champion = service.champion()
    registry = Registry(config=Config(env=service.env))
    copied = registry.client.get_model_version("mnist-mlp", "2")
    gone = registry.register(copied.run_id, copied.source).version
    rollout = start(registry, None, RolloutRequest(version=gone, mode="canary", percent=50, **PATIENT))
    registry.delete_version(None, gone)
    state = wait_for(lambda: (s := service.state())["status"] != "running" and s, 30, "the rollout to end")
    assert (state["id"], state["status"]) == (rollout.id, "rolled-back"), state
    assert "cannot be loaded" in state["reason"] and gone in state["reason"], state
    assert service.champion() == champion and service.versions(100) == {champion}
