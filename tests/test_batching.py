"""The service's batcher, in process: batches form under concurrency, answers never mix, budgets hold, and a
shadow candidate predicts off the answer path."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

from mindtrace.models.net import MLPNet, probabilities
from mindtrace.monitoring import PredictionLog
from mindtrace.rollout import Criteria, Rollout
from service.batching import NotServing, Overloaded, Predictor, Served
from service.recorder import Recorder


def _classifier(seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    torch.manual_seed(seed)
    net = MLPNet([784, 16, 10]).eval()
    return lambda pixels: probabilities(net, pixels)


def _served(classify: Callable[[np.ndarray], np.ndarray], version: str = "1") -> Served:
    return Served(classify, "mnist-mlp", version, f"mnist-mlp:v{version}-test", time.time())


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def test_concurrent_requests_share_model_calls_and_each_gets_its_own_answer():
    predictor = Predictor(max_requests=8, max_latency_ms=10_000)
    calls: list[int] = []
    real = _classifier()

    def counted(pixels):
        calls.append(len(pixels))
        return real(pixels)

    predictor.current = _served(counted)
    requests = [_images(1 + i % 3, seed=i) for i in range(40)]  # 1 to 3 images each

    async def main():
        return await asyncio.gather(*(predictor.predict(p) for p in requests))

    answers = asyncio.run(main())
    for pixels, (probs, served) in zip(requests, answers, strict=True):
        assert served.version == "1"
        np.testing.assert_allclose(probs, real(pixels), atol=1e-6)
    assert sum(calls) == sum(len(p) for p in requests)
    assert len(calls) < len(requests)  # requests were batched together
    assert max(calls) <= 8 * 3  # at most 8 requests per model call


def test_a_request_that_waited_past_the_budget_is_refused_and_the_rest_go_on():
    predictor = Predictor(max_requests=1, max_latency_ms=50)
    real = _classifier()

    def slow(pixels):
        time.sleep(0.08)  # longer than the budget: whoever queues behind this call waits too long
        return real(pixels)

    predictor.current = _served(slow)

    async def main():
        return await asyncio.gather(
            *(predictor.predict(_images(1, i)) for i in range(3)), return_exceptions=True
        )

    first, *rest = asyncio.run(main())
    assert isinstance(first, tuple)
    assert any(isinstance(r, Overloaded) for r in rest)

    async def again():
        return await predictor.predict(_images(1, 9))

    assert asyncio.run(again())[0].shape == (1, 10)  # the queue recovered


def test_no_model_means_not_serving():
    with pytest.raises(NotServing):
        asyncio.run(Predictor(8, 1000).predict(_images(1, 0)))


def test_a_shadow_is_counted_in_full_and_logged_as_its_answers_were_sampled(tmp_path: Path):
    """Requests answered by the champion, then predicted by the candidate in shadow through a real
    recorder: agreement counts every shadowed image; the log holds shadow rows only for logged answers, and
    without their pixels (the answers' rows have them)."""
    log = PredictionLog(tmp_path / "p.db")
    recorder = Recorder(log, sample=0.5, flush_seconds=60, max_pending=10_000)
    predictor = Predictor(8, 10_000, observe=recorder.observe, shadow_sink=recorder.record_shadow)
    champion, candidate = _classifier(0), _classifier(1)
    predictor.current, predictor.candidate = _served(champion), _served(candidate, "2")
    predictor.rollout = Rollout(
        id="r1", model="mnist-mlp", mode="shadow", percent=100, champion="1", candidate="2",
        criteria=Criteria(), started_at=datetime.now(timezone.utc),
    )  # fmt: skip
    requests = [_images(1 + i % 3, seed=i) for i in range(60)]

    async def one(pixels: np.ndarray) -> int:
        probs, served = await predictor.predict(pixels)
        assert served.version == "1"  # a shadow never answers
        ids, logged = recorder.record(pixels, probs, served.name, served.version)
        assert predictor.shadow(pixels, probs.argmax(axis=1), "".join(ids) if logged else None)
        return len(pixels) if logged else 0

    pixels = np.concatenate(requests)

    async def main() -> list[int]:
        answered = await asyncio.gather(*(one(p) for p in requests))
        for _ in range(250):  # the shadow work runs on the loop once no request waits
            await asyncio.sleep(0.02)
            recorder.flush()
            if log.rollout_stats("r1", "2")[1] == len(pixels):
                break
        return answered

    logged = sum(asyncio.run(main()))
    agreed = int((champion(pixels).argmax(axis=1) == candidate(pixels).argmax(axis=1)).sum())
    assert 0 < logged < len(pixels)  # the sample left some answers out
    assert log.count("mnist-mlp", "1")[0] == log.count("mnist-mlp", "2")[0] == logged
    with sqlite3.connect(log.path) as db:
        pixel_bytes = dict(db.execute("SELECT role, sum(length(pixels)) FROM chunks GROUP BY role"))
    assert pixel_bytes == {"answer": logged * 28 * 28, "shadow": 0}
    _, images, errors, shadow_agreed, _ = log.rollout_stats("r1", "2")
    assert (images, errors, shadow_agreed) == (len(pixels), 0, agreed)
    assert log.rollout_stats("r1", "1")[1] == len(pixels)  # the champion's calls, counted for the evidence
