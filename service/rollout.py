"""Staged rollout in the service: the routes, the routing of each request, and the decision loop.

- ``POST /registry/models/{name}/rollout`` records the rollout in the registry (``mindtrace.rollout.state``)
  and answers 202. A candidate already in the BentoML store is loaded first (refused, 409, when it cannot
  serve) and serves at once in this worker; one not imported yet is imported by the leader worker in the
  background, and a rollout whose candidate then fails to load is rolled back with that reason. The other
  workers and replicas follow through the registry within the swap interval (``service.watcher``).
- ``route`` decides per request: in a canary, whether the candidate answers; in shadow, whether it also
  predicts. Random by default, or sticky by a request header's value.
- ``Decider`` runs on the leader worker: every ``[ROLLOUT] CHECK_SECONDS`` it gathers the evidence from the
  prediction log and ends the rollout when ``mindtrace.rollout.decide`` says so. Two replicas may both
  decide; ending is compare-and-set in the registry, so a rollout ends once.

>>> route(predictor.rollout, request.headers)   # doctest: +SKIP
(True, False)
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

import bentoml
from fastapi import APIRouter

from mindtrace.registry.errors import NotFoundError, RegistryUnavailableError
from mindtrace.rollout import (
    Criteria,
    Rollout,
    RolloutRequest,
    current,
    decide,
    finish,
    gather,
    start,
    status,
    stop,
)
from service import metrics
from service.errors import error_response
from service.schemas import ErrorBody, ModelName
from service.settings import settings

log = logging.getLogger("mindtrace.service")
router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown model or version, or no rollout yet"},
    422: {"model": ErrorBody, "description": "invalid parameters; the message names the field"},
    503: {"model": ErrorBody, "description": "the registry cannot be reached"},
}


def route(rollout: Rollout | None, headers: Mapping[str, str] | None) -> tuple[bool, bool]:
    """(answered by the candidate?, shadowed by it?) for one request during ``rollout``."""
    if rollout is None:
        return False, False
    key = headers.get(rollout.sticky_header) if rollout.sticky_header and headers is not None else None
    picked = rollout.picks(key, random.random())
    return (picked, False) if rollout.mode == "canary" else (False, picked)


class Decider:
    """Ends the model's running rollout once its evidence decides it (the leader worker's thread)."""

    def __init__(self, service: Any, interval: float):
        self.service = service
        self.interval = interval

    def start(self) -> None:
        threading.Thread(target=self._loop, name="rollout-decider", daemon=True).start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.check()
            except RegistryUnavailableError as exc:
                log.warning("rollout check skipped: %s", exc)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("checking the rollout failed")

    def check(self) -> Rollout | None:
        """One look: the rollout this call ended, if it ended one."""
        svc = self.service
        try:
            rollout = current(svc.registry, svc.watcher.name)
        except NotFoundError:
            return None
        if rollout is None or not rollout.running:
            return None
        evidence = gather(svc.monitor.store, rollout)
        decision = decide(rollout.criteria, rollout.mode, evidence)
        if decision is None:
            return None
        status, reason = decision
        ended, changed = finish(
            svc.registry, rollout.model, rollout.id, status, reason, evidence, "mindtrace"
        )
        if changed:  # as it ended: a promotion of a version deleted meanwhile is a rollback
            metrics.rollout_decided(rollout.model, ended.status)
            log.warning("rollout %s %s: %s", rollout.id, ended.status, ended.reason)
            svc.watcher.wake()
        return ended if changed else None


def _service() -> Any:
    return bentoml.get_current_service()


def _served_model(name: str) -> None:
    served = _service().watcher.name
    if name != served:
        raise NotFoundError(
            f"this service serves {served!r}, not {name!r}; `mindtrace rollout` rolls out any"
        )


@router.post(
    "/registry/models/{name}/rollout",
    status_code=202,
    summary="Start a shadow or canary rollout of a candidate version beside the champion",
    response_model=Rollout,
    responses={
        **ERRORS,
        409: {
            "model": ErrorBody,
            "description": "another rollout runs, there is no champion, or the candidate cannot be loaded",
        },
    },
)
def start_rollout(name: ModelName, body: RolloutRequest) -> Any:
    """The criteria not given in the body come from the ``[ROLLOUT]`` settings."""
    svc = _service()
    _served_model(name)
    defaults = Criteria.from_config(settings).model_dump()
    request = RolloutRequest.model_validate({**defaults, **body.model_dump(exclude_unset=True)})
    version = svc.registry.get_version(name, request.version).version  # unknown: 404
    from bentoml.exceptions import NotFound

    from service.watcher import load_stored

    try:
        candidate = load_stored(name, version, svc.registry)
    except NotFound:
        candidate = None  # not imported yet: the leader imports it in the background (minutes at most)
    except ValueError as exc:  # a version that cannot be served must not take traffic
        message = f"version {version} of {name} cannot be loaded, so no rollout started: {exc}"
        return error_response(409, message)
    rollout = start(svc.registry, name, request.model_copy(update={"version": version}), actor="api")
    if candidate is not None:
        svc.watcher.start_rollout(candidate, rollout, announce=True)
    else:
        svc.watcher.wake()
    return rollout


@router.get(
    "/registry/models/{name}/rollout",
    summary="The current or last rollout: versions, observed share, evidence so far, status and reason",
    response_model=Rollout,
    responses=ERRORS,
)
def rollout_status(name: ModelName) -> Any:
    svc = _service()
    return status(svc.registry, name, svc.monitor.store)


@router.delete(
    "/registry/models/{name}/rollout",
    summary="Stop the running rollout: the candidate leaves traffic, the champion alone serves",
    response_model=Rollout,
    responses=ERRORS,
)
def stop_rollout(name: ModelName) -> Any:
    svc = _service()
    ended, changed = stop(svc.registry, name, svc.monitor.store, "api")
    if changed:
        metrics.rollout_decided(name, "aborted")
    if name == svc.watcher.name and svc.predictor.rollout is not None:
        svc.watcher.end_rollout(announce=True)  # here at once; the other workers within the swap interval
    return ended
