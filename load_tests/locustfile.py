"""Locust scenarios for the mindtrace service, posting real MNIST test digits and checking every answer.

    locust -f load_tests/ --host http://127.0.0.1:3000                          # web UI, pick scenarios
    locust -f load_tests/ --host http://127.0.0.1:3000 --headless -u 32 -r 32 -t 60s SingleImage
    locust -f load_tests/ --host http://127.0.0.1:3000 --headless -u 4 -r 4 -t 60s Batch --batch-size 256

Scenarios (user classes; with none named, SingleImage, Batch and Mixed run side by side):
- ``SingleImage``: POST /inference, one digit per request;
- ``Batch``: POST /inference/batch, ``--batch-size`` digits per request;
- ``Mixed``: mostly single images, some batches of 16, and registry reads (/registry/models, the
  versions of ``--model-name``, /model), as a dashboard and a client share one service.

Each digit is sent with its label known. An answer that is not a valid prediction is a failure; the
share of right labels is the accuracy, printed at the end, and a run whose accuracy is below
``--min-accuracy`` exits with status 1, so a fast but wrong server fails. ``--report-json`` writes the
accuracy and the label each digit got, to compare with the model offline. ``--api mlflow`` speaks the
protocol of ``mlflow models serve`` (POST /invocations) instead, to load that server the same way. (The
serving benchmark, ``python -m benchmarks serve``, drives servers with wrk: a Python load generator on the
same cores saturates before the server does.)
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from typing import Any

import gevent
from locust import FastHttpUser, constant, events, task
from locust.env import Environment

from mindtrace.data.digits import Digits, mnist_test_digits

DIGITS: Digits | None = None
_next_digit = itertools.count()
_answers: dict[int, Counter[int]] = {}  # digit index -> labels it was given


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("mindtrace")
    group.add_argument("--digits", type=int, default=1000, help="MNIST test digits to cycle through")
    group.add_argument("--batch-size", type=int, default=32, help="digits per request in Batch (1-1024)")
    group.add_argument("--min-accuracy", type=float, default=0.9, help="exit 1 below this accuracy")
    group.add_argument(
        "--token", default=os.environ.get("MINDTRACE_INFERENCE_TOKEN", ""), help="bearer token for inference"
    )
    group.add_argument("--model-name", default="mnist-mlp", help="registered model that Mixed browses")
    group.add_argument("--api", choices=("mindtrace", "mlflow"), default="mindtrace", help="request protocol")
    group.add_argument("--report-json", default="", help="write accuracy and per-digit labels to this file")


@events.init.add_listener
def _load_digits(environment: Environment, **_: Any) -> None:
    global DIGITS
    if environment.parsed_options is not None:
        DIGITS = mnist_test_digits(environment.parsed_options.digits)
        # Loading blocked gevent's loop for seconds; without this its cached clock would end a -t run early.
        gevent.get_hub().loop.update_now()


@events.quitting.add_listener
def _report(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    checked = sum(sum(c.values()) for c in _answers.values())
    correct = sum(c[int(DIGITS.labels[i])] for i, c in _answers.items()) if DIGITS is not None else 0
    accuracy = correct / checked if checked else None
    if accuracy is not None:
        print(
            f"accuracy: {correct}/{checked} answers right = {accuracy:.4f} (minimum {options.min_accuracy})"
        )
    if accuracy is None or accuracy < options.min_accuracy:
        print("accuracy is below --min-accuracy: the server answers wrongly (or not at all)")
        environment.process_exit_code = 1
    if options.report_json:
        report = {
            "checked": checked,
            "correct": correct,
            "accuracy": accuracy,
            # The label each digit got most often, and how many digits got two different labels.
            "labels": {str(i): c.most_common(1)[0][0] for i, c in _answers.items()},
            "inconsistent_digits": sum(len(c) > 1 for c in _answers.values()),
            # The final figures (Locust's CSV files are written every second and miss the last one).
            "stats": {
                "Aggregated": _figures(environment.stats.total),
                **{name: _figures(entry) for (name, _), entry in environment.stats.entries.items()},
            },
        }
        with open(options.report_json, "w") as f:
            json.dump(report, f)


def _figures(entry: Any) -> dict[str, float]:
    percentile = entry.get_response_time_percentile
    return {
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "rps": entry.total_rps,
        "p50_ms": percentile(0.5) if entry.num_requests else 0,
        "p95_ms": percentile(0.95) if entry.num_requests else 0,
        "p99_ms": percentile(0.99) if entry.num_requests else 0,
    }


class DigitUser(FastHttpUser):
    """Posts digits and checks the answers; the scenarios below say how many and where."""

    abstract = True
    wait_time = constant(0)  # closed loop: each user sends its next request as soon as it has an answer

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.headers = {"Authorization": f"Bearer {options.token}"} if options.token else {}
        self.mlflow = options.api == "mlflow"

    def classify(self, count: int, single: bool = False) -> None:
        assert DIGITS is not None
        indices = [next(_next_digit) % len(DIGITS) for _ in range(count)]
        texts = [DIGITS.texts[i] for i in indices]
        if self.mlflow:
            path, body, name = "/invocations", {"inputs": texts}, f"/invocations x{count}"
        elif single:
            path, body, name = "/inference", {"image": texts[0]}, "/inference"
        else:
            path, body, name = "/inference/batch", {"images": texts}, f"/inference/batch x{count}"
        with self.client.post(path, json=body, headers=self.headers, name=name, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {(r.text or '')[:200]}")
                return
            try:
                labels = _labels(r.json(), count, many=self.mlflow or not single)
            except (ValueError, KeyError, TypeError) as exc:
                r.failure(f"not a valid prediction: {exc}")
                return
        for i, label in zip(indices, labels, strict=True):
            _answers.setdefault(i, Counter())[label] += 1


def _labels(body: Any, count: int, many: bool) -> list[int]:
    predictions = body["predictions"] if many else [body]
    if len(predictions) != count:
        raise ValueError(f"{len(predictions)} predictions for {count} images")
    labels = []
    for p in predictions:
        label, probs = p["label"], p["probabilities"]
        if not (isinstance(label, int) and 0 <= label <= 9 and len(probs) == 10):
            raise ValueError(f"label {label!r} with {len(probs)} probabilities")
        labels.append(label)
    return labels


class SingleImage(DigitUser):
    @task
    def one_digit(self) -> None:
        self.classify(1, single=True)


class Batch(DigitUser):
    def on_start(self) -> None:
        super().on_start()
        self.batch_size = self.environment.parsed_options.batch_size

    @task
    def many_digits(self) -> None:
        self.classify(self.batch_size)


class Mixed(DigitUser):
    @task(16)
    def one_digit(self) -> None:
        self.classify(1, single=True)

    @task(2)
    def sixteen_digits(self) -> None:
        self.classify(16)

    @task(1)
    def registry_models(self) -> None:
        self.client.get("/registry/models", name="/registry/models")

    @task(1)
    def recent_versions(self) -> None:
        name = self.environment.parsed_options.model_name
        self.client.get(f"/registry/models/{name}/versions?limit=5", name="/registry/models/{name}/versions")

    @task(1)
    def served_model(self) -> None:
        self.client.get("/model", name="/model")
