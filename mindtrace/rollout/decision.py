"""A rollout's evidence, gathered from the prediction log, and the decision it leads to.

Every worker of every replica writes its predictions (answers and shadow predictions) and its model calls'
counts and latencies into the shared prediction log (``mindtrace.monitoring.store``), so the evidence is the
same whoever gathers it: the service's leader worker, another replica's, or ``mindtrace rollout status``.

- requests, errors, p99: each version's model calls since the rollout started;
- live accuracy: feedback labels on each version's answers (canary); in shadow mode both versions are judged
  on the same labelled requests, the candidate through its shadow prediction of each;
- agreement (shadow): the share of shadowed requests where the candidate gave the label the client got.

>>> evidence = gather(PredictionLog(path), rollout)        # doctest: +SKIP
>>> decide(rollout.criteria, rollout.mode, evidence)          # doctest: +SKIP
('rolled-back', 'the candidate fell short: accuracy 0.1020 < 0.8710 - 0.0000')
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from mindtrace.monitoring import latency
from mindtrace.monitoring.store import PredictionLog
from mindtrace.registry.errors import NotFoundError
from mindtrace.rollout.state import (
    Criteria,
    Evidence,
    Mode,
    Rollout,
    Status,
    VersionEvidence,
    current,
    finish,
)

if TYPE_CHECKING:
    from mindtrace.registry.query import Registry

Decision = tuple[Status, str]


def gather(log: PredictionLog, rollout: Rollout, now: float | None = None) -> Evidence:
    """The evidence of ``rollout`` so far: reads that grow with its feedback labels and its flushes, not
    with its requests."""
    now = time.time() if now is None else now
    since = rollout.started_at.timestamp()
    model, champion, candidate = rollout.model, rollout.champion, rollout.candidate
    if rollout.mode == "shadow":
        # Both judged on the same requests: the labelled answers the candidate also predicted.
        paired = log.paired_feedback_since(model, champion, candidate, since)
        champion_pairs = [(answered, truth) for answered, _, truth in paired]
        candidate_pairs = [(shadowed, truth) for _, shadowed, truth in paired]
    else:
        champion_pairs = log.feedback_since(model, champion, since)
        candidate_pairs = log.feedback_since(model, candidate, since)
    first, _ = _version(log, rollout.id, champion, champion_pairs)
    second, agreed = _version(log, rollout.id, candidate, candidate_pairs)
    total = first.requests + (second.requests if rollout.mode == "canary" else 0)
    shadow = rollout.mode == "shadow" and second.images > 0
    return Evidence(
        seconds=round(now - since, 1),
        champion=first,
        candidate=second,
        share=round(second.requests / total, 4) if total else None,
        agreement=round(agreed / second.images, 6) if shadow else None,
        compared=second.images if shadow else 0,
    )


def _version(
    log: PredictionLog, rollout: str, version: str, pairs: list[tuple[int, int]]
) -> tuple[VersionEvidence, int]:
    """One version's evidence, and how many of its shadow predictions agreed with the answers."""
    requests, images, errors, agreed, counts = log.rollout_stats(rollout, version)
    p99 = latency.quantile(counts, 0.99) if len(counts) else None
    correct = sum(predicted == truth for predicted, truth in pairs)
    evidence = VersionEvidence(
        version=version,
        requests=requests,
        images=images,
        errors=errors,
        error_rate=round(errors / requests, 6) if requests else None,
        p99_ms=None if p99 is None else round(p99 * 1000, 3),
        labelled=len(pairs),
        accuracy=round(correct / len(pairs), 6) if pairs else None,
    )
    return evidence, agreed


def status(registry: Registry, name: str | None, log: PredictionLog | None) -> Rollout:
    """The model's current or last rollout, a running one with its evidence as of now (none without a
    ``log``); ``NotFoundError`` when it never had one. What GET .../rollout and ``mindtrace rollout status``
    show."""
    rollout = _last(registry, name)
    if rollout.running and log is not None:
        rollout = rollout.model_copy(update={"evidence": gather(log, rollout)})
    return rollout


def stop(
    registry: Registry, name: str | None, log: PredictionLog | None, actor: str | None = None
) -> tuple[Rollout, bool]:
    """A person's stop: the running rollout ends ``aborted`` with its evidence so far. Returns the rollout
    and whether this call ended it (an ended one is returned as it is: stopping it changes nothing)."""
    rollout = _last(registry, name)
    if not rollout.running:
        return rollout, False
    evidence = None if log is None else gather(log, rollout)
    return finish(registry, rollout.model, rollout.id, "aborted", "stopped by a person", evidence, actor)


def _last(registry: Registry, name: str | None) -> Rollout:
    rollout = current(registry, name)
    if rollout is None:
        raise NotFoundError(f"{registry.model_name(name)!r} has had no rollout; start one first")
    return rollout


def decide(criteria: Criteria, mode: Mode, evidence: Evidence) -> Decision | None:
    """``(status, reason)`` once the evidence suffices or time is up; None to keep collecting."""
    champion, candidate = evidence.champion, evidence.candidate
    missing = []
    if candidate.requests < criteria.min_requests:
        missing.append(f"{candidate.requests}/{criteria.min_requests} candidate requests")
    for who, v in (("champion", champion), ("candidate", candidate)):
        if v.labelled < criteria.min_labels:
            missing.append(f"{v.labelled}/{criteria.min_labels} {who} feedback labels")
    if missing:
        if evidence.seconds >= criteria.max_minutes * 60:
            late = f"not enough evidence after {criteria.max_minutes:g} min"
            return "rolled-back", f"{late}: {', '.join(missing)}"
        return None
    checks = _checks(criteria, mode, evidence)
    failed = [text for ok, text in checks if not ok]
    if failed:
        return "rolled-back", "the candidate fell short: " + "; ".join(failed)
    return "promoted", "every check passed: " + "; ".join(text for _, text in checks)


def _checks(criteria: Criteria, mode: Mode, evidence: Evidence) -> list[tuple[bool, str]]:
    champion, candidate = evidence.champion, evidence.candidate
    checks = []
    if champion.accuracy is not None and candidate.accuracy is not None:
        ok = candidate.accuracy >= champion.accuracy - criteria.accuracy_margin
        sign = ">=" if ok else "<"
        margin = criteria.accuracy_margin
        text = f"accuracy {candidate.accuracy:.4f} {sign} {champion.accuracy:.4f} - {margin:.4f}"
        checks.append((ok, text))
    if mode == "shadow" and evidence.agreement is not None:
        ok = evidence.agreement >= criteria.min_agreement
        sign = ">=" if ok else "<"
        checks.append((ok, f"agreement {evidence.agreement:.4f} {sign} {criteria.min_agreement:.4f}"))
    ours, theirs = candidate.error_rate or 0.0, champion.error_rate or 0.0
    ok = ours <= theirs + criteria.error_margin
    checks.append((ok, f"errors {ours:.4f} {'<=' if ok else '>'} {theirs:.4f} + {criteria.error_margin:.4f}"))
    if candidate.p99_ms is not None and champion.p99_ms is not None:
        ok = candidate.p99_ms <= champion.p99_ms + criteria.p99_margin_ms
        sign = "<=" if ok else ">"
        margin = criteria.p99_margin_ms
        checks.append((ok, f"p99 {candidate.p99_ms:.1f} ms {sign} {champion.p99_ms:.1f} ms + {margin:g} ms"))
    return checks
