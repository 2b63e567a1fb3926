"""The pointer file through which a server's workers follow one champion and one rollout, in process."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import numpy as np

from mindtrace.config import Config
from mindtrace.rollout import Criteria, Rollout
from service.batching import Predictor, Served
from service.watcher import Follower, champion_fields, publish


def _served(version: str) -> Served:
    return Served(
        lambda pixels: np.full((len(pixels), 10), 0.1), "mnist-mlp", version, f"t:v{version}", time.time()
    )


def test_a_follower_behind_its_leader_never_writes_back_an_older_champion(tmp_path):
    # The leader swapped to version 3 and published it; this follower still serves 2 (it follows within a
    # poll) when a client starts, then stops, a rollout through it.
    follower = Follower(
        Predictor(max_requests=4, max_latency_ms=10), Config(env={"MINDTRACE_HOME": str(tmp_path)})
    )
    publish(follower.pointer, champion_fields(_served("3")))
    follower.predictor.current = _served("2")
    rollout = Rollout(
        id="r1", model="mnist-mlp", mode="canary", percent=10, champion="3", candidate="1",
        criteria=Criteria(), started_at=datetime.now(timezone.utc),
    )  # fmt: skip

    def pointer() -> tuple[str, str | None]:
        body = json.loads(follower.pointer.read_text())
        return body["version"], body["rollout"] and body["rollout"]["candidate_tag"]

    follower.start_rollout(_served("1"), rollout, announce=True)
    assert pointer() == ("3", "t:v1")
    follower.end_rollout(announce=True)
    assert pointer() == ("3", None)
    # An alias move answered by this worker does change the champion: it loaded the new one itself.
    follower.serve(_served("4"), announce=True)
    assert pointer() == ("4", None)
