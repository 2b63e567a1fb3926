"""Settle what a run that died left half done in the registry: finish it, or undo it, never leave it half.

A retraining run writes the registry in steps: it registers a version, the gate judges it (the decision tags),
then the aliases move. A process killed between two steps (SIGKILL, the OOM killer, a power cut) runs no
cleanup, so whoever finds it dead (the process that started it, or any reader of its job) settles it:

- the run, still RUNNING, is marked KILLED;
- a version the run registered and the gate never judged is removed, and the aliases that pointed at it
  with it (their moves logged): the registry is as before the run;
- a version the gate promoted becomes champion if it is not yet and loses the challenger alias: the decision
  is carried out, as the run would have done. An alias moved but not logged is logged by the next move
  (``AliasMoves._log_unlogged_move``).

>>> settle_run(Registry(), "4f1c9e...")        # doctest: +SKIP
['run 4f1c9e... marked KILLED', 'version 3 removed: registered, never judged by the promotion gate']
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from mindtrace.registry.errors import NotFoundError
from mindtrace.registry.mlflow_errors import mlflow_errors
from mindtrace.registry.schemas import DECISION_TAG

if TYPE_CHECKING:
    from mindtrace.registry.query import Registry

CHAMPION, CHALLENGER = "champion", "challenger"


def settle_run(registry: Registry, run_id: str) -> list[str]:
    """Finish or undo what run ``run_id`` (which is dead) left in the registry; what was done, in words."""
    done = []
    with mlflow_errors(f"no run {run_id}"):
        if registry.client.get_run(run_id).info.status == "RUNNING":
            registry.client.set_terminated(run_id, "KILLED")
            done.append(f"run {run_id} marked KILLED")
        versions = registry.client.search_model_versions(f"run_id = '{run_id}'")
    for found in versions:
        info = registry.get_version(found.name, str(found.version))
        decision = info.tags.get(DECISION_TAG)
        reason = f"settling run {run_id}, which died"
        if decision is None:
            for alias in info.aliases:
                _remove_alias(registry, info.name, alias, f"{reason} before the gate judged it")
            registry.delete_version(info.name, info.version)
            done.append(f"version {info.version} removed: registered, never judged by the promotion gate")
        elif decision == "promoted":
            logged = registry.alias_history(info.name, CHAMPION)
            if CHAMPION not in info.aliases:
                done.append(f"version {info.version} made champion, as the gate had decided")
            elif not logged or logged[-1].version != info.version:
                done.append(f"the move of champion to version {info.version} logged (it was not)")
            # Also when it is champion already: a move first logs a move that was made but not logged.
            registry.set_alias(info.name, CHAMPION, info.version, reason=f"{reason}: the gate promoted it")
            if CHALLENGER in info.aliases:
                _remove_alias(registry, info.name, CHALLENGER, f"{reason}: promoted to {CHAMPION}")
                done.append(f"challenger alias removed from version {info.version}, now champion")
    return done


def _remove_alias(registry: Registry, name: str, alias: str, reason: str) -> None:
    with contextlib.suppress(NotFoundError):  # removed since
        registry.remove_alias(name, alias, reason=reason)
