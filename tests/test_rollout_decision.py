"""A rollout's evidence from a real prediction log (SQLite files in a temp folder), its decision, and its
routing: what the service's decision loop and ``mindtrace rollout status`` compute."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from mindtrace.monitoring import latency
from mindtrace.monitoring.store import Batch, PredictionLog, Stats, new_ids, split_ids
from mindtrace.rollout import Criteria, Rollout, decide, gather
from mindtrace.rollout.state import Evidence, VersionEvidence
from service.rollout import route

RNG = np.random.default_rng(0)
ROLLOUT_ID = "20261128-120000-abcdef"


def _rollout(mode: str, percent: float = 10, minutes_ago: float = 1, **criteria) -> Rollout:
    return Rollout(
        id=ROLLOUT_ID, model="m", mode=mode, percent=percent, champion="1", candidate="2",
        criteria=Criteria(**criteria), started_at=datetime.now(timezone.utc) - timedelta(minutes=minutes_ago),
    )  # fmt: skip


def _answers(
    log: PredictionLog, version: str, truth: np.ndarray, accuracy: float
) -> tuple[list[str], np.ndarray]:
    """Log answers of ``version`` right on about ``accuracy`` of ``truth``; their ids and labels."""
    n = len(truth)
    labels = np.where(RNG.random(n) < accuracy, truth, (truth + 1) % 10)
    ids = split_ids(new_ids(n))
    log.write(
        [Batch(ids, "m", version, np.eye(10, dtype=np.float32)[labels], np.zeros((n, 28, 28), np.uint8))]
    )
    return ids, labels


def _stats(log: PredictionLog, version: str, role: str, requests: int, errors: int, seconds: float, agreed=0):
    counts = latency.histogram(np.full(requests, seconds))
    log.write_stats([Stats(ROLLOUT_ID, "m", version, role, requests, requests, errors, agreed, counts)])


def test_canary_evidence_counts_each_version_and_joins_feedback(tmp_path: Path):
    log = PredictionLog(tmp_path / "p.db")
    truth = RNG.integers(0, 10, 1000)
    champion_ids, champion_labels = _answers(log, "1", truth[:900], 0.9)
    candidate_ids, candidate_labels = _answers(log, "2", truth[900:], 0.5)
    labelled = champion_ids[:300] + candidate_ids[:80]
    log.add_feedback(dict(zip(labelled, truth[:300].tolist() + truth[900:980].tolist(), strict=True)))
    _stats(log, "1", "answer", 900, 0, 0.001)
    _stats(log, "2", "answer", 100, 3, 0.004)
    log.write_stats([Stats("another rollout", "m", "1", "answer", 50, 50, 50, 0, latency.empty())])

    evidence = gather(log, _rollout("canary"))
    assert evidence.share == pytest.approx(0.1) and evidence.champion.errors == 0  # its own rollout's only
    assert evidence.champion.labelled == 300 and evidence.candidate.labelled == 80
    assert evidence.champion.accuracy == pytest.approx(
        np.mean(champion_labels[:300] == truth[:300]), abs=1e-6
    )
    assert evidence.candidate.accuracy == pytest.approx(
        np.mean(candidate_labels[:80] == truth[900:980]), abs=1e-6
    )
    assert evidence.candidate.error_rate == pytest.approx(0.03) and evidence.agreement is None
    assert 4.0 <= evidence.candidate.p99_ms <= 4.4 and 1.0 <= evidence.champion.p99_ms <= 1.1

    # Labels of answers made before the rollout started do not count.
    assert gather(log, _rollout("canary", minutes_ago=-1)).champion.labelled == 0


def test_shadow_evidence_judges_both_versions_on_the_same_labelled_requests(tmp_path: Path):
    log = PredictionLog(tmp_path / "p.db")
    truth = RNG.integers(0, 10, 500)
    ids, answered = _answers(log, "1", truth, 0.9)
    shadow = np.where(np.arange(500) % 4 == 0, (answered + 1) % 10, answered)  # disagrees on a quarter
    shadowed = ids[:400]  # the last 100 were not shadowed (a full queue, a share below 100 %)
    probs, pixels = np.eye(10, dtype=np.float32)[shadow[:400]], np.zeros((400, 28, 28), np.uint8)
    log.write([Batch(shadowed, "m", "2", probs, pixels, role="shadow")])
    _stats(log, "1", "answer", 500, 0, 0.001)
    _stats(log, "2", "shadow", 400, 0, 0.001, agreed=int((shadow[:400] == answered[:400]).sum()))
    labelled = ids[:200] + ids[450:]  # 50 of them have no shadow prediction: left out of both
    log.add_feedback({pid: int(truth[ids.index(pid)]) for pid in labelled})

    evidence = gather(log, _rollout("shadow", percent=100))
    assert evidence.agreement == pytest.approx(0.75) and evidence.compared == 400
    assert evidence.share == pytest.approx(0.8)  # shadowed over answered
    assert evidence.champion.labelled == evidence.candidate.labelled == 200
    assert evidence.champion.accuracy == pytest.approx(np.mean(answered[:200] == truth[:200]), abs=1e-6)
    assert evidence.candidate.accuracy == pytest.approx(np.mean(shadow[:200] == truth[:200]), abs=1e-6)
    # Feedback labels the answer; the shadow prediction under the same id is only paired with it.
    assert log.feedback_since("m", "2", 0) == []


def _evidence(champion_acc, candidate_acc, labels=300, requests=2000, errors=(0, 0), p99=(2.0, 2.5), **extra):
    def version(v, accuracy, err, p):
        return VersionEvidence(
            version=v, requests=requests, images=requests, errors=err, error_rate=err / requests, p99_ms=p,
            labelled=labels, accuracy=accuracy,
        )  # fmt: skip

    fields = {"seconds": 120.0, "share": 0.1, "agreement": None, **extra}
    return Evidence(champion=version("1", champion_acc, errors[0], p99[0]),
                    candidate=version("2", candidate_acc, errors[1], p99[1]), **fields)  # fmt: skip


def test_the_decision_promotes_only_a_candidate_at_least_as_good_on_every_count():
    criteria = Criteria(min_requests=1000, min_labels=200, accuracy_margin=0.01, min_agreement=0.9)
    status, reason = decide(criteria, "canary", _evidence(0.90, 0.895))
    assert status == "promoted" and "accuracy 0.8950 >= 0.9000 - 0.0100" in reason
    status, reason = decide(criteria, "canary", _evidence(0.90, 0.85))
    assert status == "rolled-back" and "accuracy 0.8500 < 0.9000" in reason
    status, reason = decide(criteria, "canary", _evidence(0.90, 0.95, errors=(0, 20)))
    assert status == "rolled-back" and "errors 0.0100 > 0.0000" in reason
    status, reason = decide(criteria, "canary", _evidence(0.90, 0.95, p99=(2.0, 9.0)))
    assert status == "rolled-back" and "p99 9.0 ms > 2.0 ms + 5 ms" in reason
    status, reason = decide(criteria, "shadow", _evidence(0.90, 0.95, agreement=0.8))
    assert status == "rolled-back" and "agreement 0.8000 < 0.9000" in reason


def test_the_decision_waits_for_evidence_and_rolls_back_when_time_is_up():
    criteria = Criteria(min_requests=1000, min_labels=200, max_minutes=5)
    assert decide(criteria, "canary", _evidence(0.9, 0.99, labels=150)) is None
    assert decide(criteria, "canary", _evidence(0.9, 0.99, requests=999)) is None
    status, reason = decide(criteria, "canary", _evidence(0.9, 0.99, labels=150, seconds=301.0))
    assert status == "rolled-back" and "150/200 champion feedback labels" in reason
    # No labels asked for: decided on requests, errors and latency alone.
    assert (
        decide(Criteria(min_requests=10, min_labels=0), "canary", _evidence(None, None, labels=0))[0]
        == "promoted"
    )


def test_routing_is_random_by_default_and_sticky_by_header():
    canary = _rollout("canary", percent=10)
    picks = [route(canary, {})[0] for _ in range(20_000)]
    assert 0.09 < np.mean(picks) < 0.11
    assert route(None, {}) == (False, False)
    assert route(_rollout("shadow", percent=100), {}) == (False, True)

    sticky = canary.model_copy(update={"sticky_header": "X-Client-Id", "percent": 50})
    for client in range(50):
        headers = {"X-Client-Id": f"client-{client}"}
        assert len({route(sticky, headers) for _ in range(20)}) == 1  # one client, one version
    shares = [route(sticky, {"X-Client-Id": f"c{i}"})[0] for i in range(4000)]
    assert 0.45 < np.mean(shares) < 0.55
