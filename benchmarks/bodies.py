"""What every server is sent: real MNIST test digits as base64 PNG, in each server's own protocol; and the
correctness pass, which sends each request once and compares the labels with the model's offline answers,
so that a fast server that answers wrongly is caught before its speed is reported.

>>> [(r.route, r.digits) for r in digit_requests("mindtrace", ["AAA", "BBB", "CCC"], 2)]
[('/inference/batch', (0, 1)), ('/inference/batch', (2, 0))]
>>> digit_requests("mlflow", ["AAA"], 1)[0].body
'{"inputs": ["AAA"]}'
"""

from __future__ import annotations

import base64
import http.client
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from mindtrace.predict import batch_pixels


@dataclass(frozen=True)
class DigitRequest:
    """One request body, the route it goes to, and which digits (by index) it carries, in order."""

    route: str
    body: str
    digits: tuple[int, ...]

    @property
    def many(self) -> bool:
        """Whether the answer lists predictions (batch routes, MLflow) rather than being one."""
        return self.route not in ("/inference", V2_INFER)


def digit_requests(api: str, texts: list[str], per_request: int) -> list[DigitRequest]:
    """Requests of ``per_request`` digits each that together carry every one of ``texts`` at least once
    (the last wraps round to the first). ``api``: ``mindtrace`` (this service and the FastAPI rival),
    ``mlflow`` (``POST /invocations`` with ``{"inputs": [...]}``) or ``v2`` (this service's Open Inference
    Protocol route, UINT8 pixels as JSON)."""
    requests = []
    for start in range(0, len(texts), per_request):
        digits = tuple((start + j) % len(texts) for j in range(per_request))
        images = [texts[i] for i in digits]
        if api == "mlflow":
            route, body = "/invocations", {"inputs": images}
        elif api == "v2":  # the pixels /inference would see, as a KServe V2 client sends them
            pixels = batch_pixels(images)
            tensor = {"name": "pixels", "datatype": "UINT8", "shape": [len(images), 784]}
            route, body = V2_INFER, {"inputs": [{**tensor, "data": pixels.ravel().tolist()}]}
        elif per_request == 1:
            route, body = "/inference", {"image": images[0]}
        else:
            route, body = "/inference/batch", {"images": images}
        requests.append(DigitRequest(route, json.dumps(body), digits))
    return requests


# The long run's registry reads, and its client mistakes: each must get its 4xx, never a 5xx.
REGISTRY_READS = (
    "/registry/models",
    "/registry/models/mnist-mlp/versions/champion",
    "/registry/models/mnist-mlp/versions?limit=5",
    "/registry/models/mnist-mlp/history",
    "/model",
    "/jobs?limit=5",
)
JSON = "application/json"
V2_INFER = "/v2/models/mnist-mlp/infer"


def _png_header(width: int, height: int) -> bytes:
    """A PNG of only a header (1-bit grey, ``width`` x ``height``): a decompression bomb's announcement."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def mistakes(good: str) -> list[tuple[str, str, str, str]]:
    """Bad requests beside a good base64 image ``good``, as ``(method, path, content type, body)``."""
    bomb = base64.b64encode(_png_header(30_000, 30_000)).decode()
    return [
        ("POST", "/inference", JSON, json.dumps({"image": "not base64 at all!"})),  # 400
        ("POST", "/inference", JSON, '{"image": '),  # 400: not JSON
        ("POST", "/inference", JSON, "{}"),  # 422: no image
        ("POST", "/inference", "application/x-www-form-urlencoded", "image=abc"),  # 415
        ("POST", "/inference", JSON, json.dumps({"image": bomb})),  # 413: 900 M pixels
        ("POST", "/inference/batch", JSON, json.dumps({"images": [good, "%%%"]})),  # 400: names image 1
        ("GET", "/registry/models/mnist-mlp/versions/999999", "", ""),  # 404
        ("GET", "/registry/models/mnist-mlp/versions?where=test_acc%3E%3D", "", ""),  # 422: bad filter
    ]


def mixed_requests(texts: list[str], batch: int = 16) -> list[tuple[str, str, str, str]]:
    """The long run's traffic for this service, in cycles of ten: six single images, one batch of ``batch``
    images, one registry read and two client mistakes, as ``(method, path, content type, body)``.

    >>> requests = mixed_requests(["AAA", "BBB"], batch=2)
    >>> len(requests), [r[1] for r in requests[:10]].count("/inference")
    (80, 8)
    """
    n, bad = len(texts), mistakes(texts[0])
    requests = []
    for cycle in range(max(n // 6, len(bad))):
        requests += [
            ("POST", "/inference", JSON, json.dumps({"image": texts[(6 * cycle + j) % n]})) for j in range(6)
        ]
        images = [texts[(batch * cycle + j) % n] for j in range(batch)]
        requests.append(("POST", "/inference/batch", JSON, json.dumps({"images": images})))
        requests.append(("GET", REGISTRY_READS[cycle % len(REGISTRY_READS)], "", ""))
        requests += [bad[(2 * cycle) % len(bad)], bad[(2 * cycle + 1) % len(bad)]]
    return requests


@dataclass
class Correctness:
    """The outcome of a correctness pass: images checked, how many got the offline label, and the first
    problem met (a wrong label, an error status, a malformed answer)."""

    checked: int = 0
    same: int = 0
    problem: str = ""

    @property
    def share(self) -> float:
        return self.same / self.checked if self.checked else 0.0


def check_answers(url: str, requests: list[DigitRequest], expected: np.ndarray) -> Correctness:
    """Send each request once, in turn, over one keep-alive connection; compare every label with
    ``expected[digit]``. Problems are counted, never raised: the report shows them.

    >>> requests = digit_requests("mindtrace", texts, 1)                    # doctest: +SKIP
    >>> check_answers("http://127.0.0.1:3000", requests, labels)            # doctest: +SKIP
    Correctness(checked=1000, same=1000, problem='')
    """
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    result = Correctness()
    try:
        for request in requests:
            result.checked += len(request.digits)
            connection.request("POST", request.route, request.body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read()
            try:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}: {data[:200].decode(errors='replace')}")
                labels = _labels(json.loads(data), request)
            except (ValueError, KeyError, TypeError) as exc:
                result.problem = result.problem or f"{request.route}: {exc}"
                continue
            for digit, label in zip(request.digits, labels, strict=True):
                if label == expected[digit]:
                    result.same += 1
                elif not result.problem:
                    result.problem = f"digit {digit}: label {label}, offline {expected[digit]}"
    finally:
        connection.close()
    return result


def _labels(answer: Any, request: DigitRequest) -> list[int]:
    if request.route == V2_INFER:
        return next(o["data"] for o in answer["outputs"] if o["name"] == "label")
    predictions = answer["predictions"] if request.many else [answer]
    if len(predictions) != len(request.digits):
        raise ValueError(f"{len(predictions)} predictions for {len(request.digits)} images")
    return [int(p["label"]) for p in predictions]
