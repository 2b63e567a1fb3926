"""The promotion gate, run after every training: does the new version replace the champion?

Both the challenger and the champion are loaded from the registry and scored on the same test batches now, so
a champion trained long ago is judged on exactly the data the challenger is. The decision and its reason are
recorded as tags on the challenger's version, and the ``champion`` alias moves only when it passes.

>>> policy = PromotionPolicy(policy="if-better", margin=0.001)
>>> decide(policy, challenger=0.985, champion=0.981, challenger_accuracy=0.985)
(True, 'test_acc 0.9850 beats the champion 0.9810 by 0.0040 (margin 0.0010)')
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch

from mindtrace.evaluate import Evaluation, evaluate
from mindtrace.registry.query import Registry, RegistryError
from mindtrace.registry.schemas import GATE_TAG_PREFIX, GateDecision
from mindtrace.train_config import PromotionPolicy
from mindtrace.utils import ifnone

CHAMPION, CHALLENGER = "champion", "challenger"
_LOWER_IS_BETTER = {"test_loss"}


def decide(
    policy: PromotionPolicy, challenger: float, champion: float | None, challenger_accuracy: float
) -> tuple[bool, str]:
    """The gate's rule on scores alone: (promote?, why). ``champion`` is None when there is none yet."""
    metric = policy.metric
    if policy.policy == "always":
        return True, "policy 'always' promotes every new version"
    if policy.policy == "never":
        return False, "policy 'never' leaves promotion to a person"
    if champion is None:
        ok = challenger_accuracy >= policy.min_accuracy
        relation = ">=" if ok else "<"
        minimum = policy.min_accuracy
        return (
            ok,
            f"no champion yet; test accuracy {challenger_accuracy:.4f} {relation} the minimum {minimum:.4f}",
        )
    gain = champion - challenger if metric in _LOWER_IS_BETTER else challenger - champion
    if gain > policy.margin:
        beaten = f"beats the champion {champion:.4f} by {abs(gain):.4f}"
        return True, f"{metric} {challenger:.4f} {beaten} (margin {policy.margin:.4f})"
    return False, (
        f"{metric} {challenger:.4f} does not beat the champion {champion:.4f} by more than the margin "
        f"{policy.margin:.4f}"
    )


def review(
    registry: Registry,
    version: str,
    test_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    policy: PromotionPolicy | None = None,
    name: str | None = None,
) -> GateDecision:
    """Score ``version`` and the champion on ``test_batches``, decide, record the decision, move the aliases.

    ``test_batches`` (a DataLoader, a list of ``(x, y)``) is read into memory once. The new version is
    marked ``challenger`` first; when it passes it becomes ``champion`` and loses the challenger alias.
    """
    policy = ifnone(policy, PromotionPolicy.from_config(registry.config))
    name = registry.model_name(name)
    batches = list(test_batches)
    evaluated_on = _describe(batches)
    registry.set_alias(name, CHALLENGER, version, reason="new version, before the promotion gate")

    challenger_module, _ = registry.load_module(name, version)
    challenger = evaluate(challenger_module, batches)
    champion_version, champion, champion_error = None, None, None
    try:
        champion_info = registry.get_version(name, CHAMPION)
    except RegistryError:
        champion_info = None  # no champion yet
    if champion_info is not None and champion_info.version != version:
        champion_version = champion_info.version
        try:
            champion = evaluate(registry.load_module(name, champion_version)[0], batches)
        except (RegistryError, RuntimeError, ValueError) as exc:
            champion_error = str(exc)

    if champion_error is not None and policy.policy == "if-better":
        promoted = False
        reason = (
            f"the champion (version {champion_version}) could not be scored, so it stays: {champion_error}"
        )
    else:
        promoted, reason = decide(
            policy, _score(challenger, policy.metric), _score(champion, policy.metric), challenger.accuracy
        )
    decision = GateDecision(
        promoted=promoted,
        policy=policy.policy,
        metric=policy.metric,
        margin=policy.margin,
        reason=reason,
        challenger_version=version,
        challenger_score=_score(challenger, policy.metric),
        champion_version=champion_version,
        champion_score=_score(champion, policy.metric),
        evaluated_on=evaluated_on,
    )
    if promoted and policy.rollout != "none" and champion_version is not None:
        decision = _roll_out(registry, name, policy, decision)
    registry.set_version_tags(name, version, decision_tags(decision))
    if decision.promoted:
        registry.set_alias(name, CHAMPION, version, reason=f"promotion gate: {reason}")
        registry.remove_alias(name, CHALLENGER, reason=f"promoted to {CHAMPION}")
    return decision


def _roll_out(registry: Registry, name: str, policy: PromotionPolicy, decision: GateDecision) -> GateDecision:
    """Start a staged rollout of a version that passed, instead of promoting it (``policy.rollout``): it
    stays ``challenger`` and live traffic decides. A rollout that cannot start (another one runs) leaves it
    challenger, and the reason says so."""
    from mindtrace.rollout import Criteria, RolloutRequest, start

    request = RolloutRequest(
        **Criteria.from_config(registry.config).model_dump(),
        version=decision.challenger_version,
        mode=policy.rollout,
        percent=policy.rollout_percent,
    )
    try:
        rollout = start(registry, name, request, actor="promotion gate")
    except RegistryError as exc:
        reason = (
            f"{decision.reason}; but no {policy.rollout} rollout could start, so it stays {CHALLENGER}: {exc}"
        )
        return decision.model_copy(update={"promoted": False, "reason": reason})
    reason = f"{decision.reason}; a {rollout.mode} rollout ({rollout.id}) confirms it on live traffic first"
    return decision.model_copy(update={"promoted": False, "reason": reason, "rollout": rollout.id})


def decision_tags(decision: GateDecision) -> dict[str, str]:
    """The decision as flat string tags (``mindtrace.gate.decision = promoted``...), for versions and runs."""
    verdict = "promoted" if decision.promoted else "rollout" if decision.rollout else "rejected"
    tags = {f"{GATE_TAG_PREFIX}decision": verdict}
    for key, value in decision.model_dump(exclude={"promoted"}).items():
        if value is not None:
            tags[f"{GATE_TAG_PREFIX}{key}"] = f"{value:.6f}" if isinstance(value, float) else str(value)
    return tags


def _score(evaluation: Evaluation | None, metric: str) -> float | None:
    return None if evaluation is None else evaluation.metrics()[metric]


def _describe(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> str:
    """Size and content digest of the test set, so that a reader can tell two gates used the same one."""
    digest = hashlib.sha256()
    count = 0
    for x, y in batches:
        digest.update(x.contiguous().numpy().tobytes())
        digest.update(y.contiguous().numpy().tobytes())
        count += len(y)
    if count == 0:
        raise ValueError("the promotion gate needs a non-empty test set")
    return f"{count} examples, sha256 {digest.hexdigest()[:16]}"
