"""The service's batcher, in process: batches form under concurrency, answers never mix, budgets hold."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from mindtrace.models.net import MLPNet, probabilities
from service.batching import NotServing, Overloaded, Predictor, Served


def _classifier(seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    torch.manual_seed(seed)
    net = MLPNet([784, 16, 10]).eval()
    return lambda pixels: probabilities(net, pixels)


def _served(classify: Callable[[np.ndarray], np.ndarray]) -> Served:
    return Served(classify, "mnist-mlp", "1", "mnist-mlp:v1-test", time.time())


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
