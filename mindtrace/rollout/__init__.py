"""Staged rollout: a candidate version beside the champion (shadow or canary), decided by live evidence.

``state`` keeps a rollout in the registry; ``decision`` gathers its evidence from the prediction log and
decides. The service routes the requests (``service.rollout``); ``mindtrace rollout`` drives it from a shell.
"""

from mindtrace.rollout.decision import decide, gather, status, stop
from mindtrace.rollout.state import Criteria, Evidence, Rollout, RolloutRequest, current, finish, start

__all__ = [
    "Criteria",
    "Evidence",
    "Rollout",
    "RolloutRequest",
    "current",
    "decide",
    "finish",
    "gather",
    "start",
    "status",
    "stop",
]
