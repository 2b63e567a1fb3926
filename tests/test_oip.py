"""The Open Inference Protocol (KServe V2) against a real ``bentoml serve``, driven by the standard client:
tritonclient's HTTP client, unchanged, with its defaults (binary tensor data) and with JSON.

The service serves version 1 of a small model, with an inference token set; every answer is compared with
what ``POST /inference/batch`` answers for the same images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from mindtrace.data.digits import mnist_test_digits
from mindtrace.predict import batch_pixels
from mindtrace.preprocess import MEAN, STD
from tests.helpers import served, service_env, train

pytestmark = pytest.mark.slow

TOKEN = "oip-inference-token-5e1a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "mnist-mlp"


@dataclass
class Service:
    url: str
    texts: list[str]  # 300 real test digits, base64 PNG
    pixels: np.ndarray  # the same digits as /inference sees them, uint8 [300, 28, 28]
    labels: np.ndarray  # /inference/batch's labels for them
    probabilities: np.ndarray

    def client(self) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(self.url.removeprefix("http://"), network_timeout=60)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, real_mnist_dir: Path) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("oip")
    env = service_env(root / "home", real_mnist_dir.parent, root / "bentoml", MINDTRACE_INFERENCE_TOKEN=TOKEN)
    train(env, root, "--policy", "always")
    texts = mnist_test_digits(300, real_mnist_dir).texts
    with served(env, root / "serve.log") as (url, _):
        answer = requests.post(url + "/inference/batch", json={"images": texts}, headers=AUTH, timeout=60)
        predictions = answer.json()["predictions"]
        yield Service(
            url, texts, batch_pixels(texts),
            np.array([p["label"] for p in predictions]), np.array([p["probabilities"] for p in predictions]),
        )  # fmt: skip


def _infer(service: Service, tensor: triton.InferInput, **kw) -> triton.InferResult:
    # A copy: tritonclient adds Inference-Header-Content-Length to the dict it is given, which would then
    # go out, stale, with the caller's next request.
    return service.client().infer(MODEL, [tensor], headers=dict(AUTH), **kw)


def test_health_and_metadata(service):
    client = service.client()
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"] == ["1"]
    assert {(t["name"], t["datatype"]) for t in meta["inputs"]} == {
        ("pixels", "UINT8"), ("normalized", "FP32"), ("images", "BYTES")
    }  # fmt: skip
    normalized = next(t for t in meta["inputs"] if t["name"] == "normalized")
    assert str(MEAN) in normalized["parameters"]["normalization"]  # the metadata states the normalisation
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in meta["outputs"]} == {
        ("probabilities", "FP32", (-1, 10)), ("label", "INT64", (-1,)), ("prediction_id", "BYTES", (-1,))
    }  # fmt: skip
    assert client.get_model_metadata(MODEL, "1")["versions"] == ["1"]
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(MODEL, "7") and not client.is_model_ready("another-model")
    for name, version in (("another-model", ""), (MODEL, "7")):
        with pytest.raises(InferenceServerException) as caught:
            client.get_model_metadata(name, version)
        assert caught.value.status() == "404" and caught.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_uint8_pixels_get_the_labels_of_inference(service, binary):
    shape = [300, 28, 28] if binary else [300, 784]
    tensor = triton.InferInput("pixels", shape, "UINT8")
    tensor.set_data_from_numpy(service.pixels.reshape(shape), binary_data=binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
    result = _infer(service, tensor, outputs=outputs, request_id="r-1")
    assert np.array_equal(result.as_numpy("label"), service.labels)
    assert np.allclose(result.as_numpy("probabilities"), service.probabilities, atol=1e-6)
    response = result.get_response()
    assert response["model_name"] == MODEL and response["model_version"] == "1" and response["id"] == "r-1"


def test_normalised_fp32_and_base64_bytes_get_the_labels_of_inference(service):
    normalised = ((service.pixels / 255.0 - MEAN) / STD).astype(np.float32)[:, None]  # [N, 1, 28, 28]
    fp32 = triton.InferInput("normalized", list(normalised.shape), "FP32")
    fp32.set_data_from_numpy(normalised)
    result = _infer(service, fp32)  # every output, binary: tritonclient's default
    assert np.array_equal(result.as_numpy("label"), service.labels)
    ids = [i.decode() for i in result.as_numpy("prediction_id")]
    assert len(set(ids)) == len(service.labels) and all(len(i) == 24 for i in ids)
    feedback = {"items": [{"prediction_id": ids[0], "label": int(service.labels[0])}]}
    answer = requests.post(service.url + "/feedback", json=feedback, headers=AUTH, timeout=30)
    assert answer.status_code == 202 and answer.json()["accepted"] == 1  # V2 ids take feedback too

    images = np.array([t.encode() for t in service.texts], dtype=np.object_)
    for binary in (True, False):
        as_bytes = triton.InferInput("images", [len(images)], "BYTES")
        as_bytes.set_data_from_numpy(images, binary_data=binary)
        assert np.array_equal(_infer(service, as_bytes).as_numpy("label"), service.labels)


def test_versions_requested_outputs_and_tokens(service):
    tensor = triton.InferInput("pixels", [4, 28, 28], "UINT8")
    tensor.set_data_from_numpy(service.pixels[:4])
    result = _infer(service, tensor, model_version="1", outputs=[triton.InferRequestedOutput("label")])
    assert np.array_equal(result.as_numpy("label"), service.labels[:4])
    assert result.as_numpy("probabilities") is None  # only what was asked for
    with pytest.raises(InferenceServerException) as caught:
        _infer(service, tensor, model_version="2")
    assert caught.value.status() == "404" and "not being served" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        service.client().infer(MODEL, [tensor])  # no token
    assert caught.value.status() == "401"
    with pytest.raises(InferenceServerException) as caught:
        _infer(service, tensor, parameters={"temperature": 2})
    assert caught.value.status() == "400" and "temperature" in caught.value.message()


def _one(datatype: str, shape: list[int], data: list) -> dict:
    return {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_one("UINT8", [1, 784], [0] * 10), "data has 10"),
        (_one("UINT8", [1, 27, 27], [0] * 729), "shape"),
        (_one("FP64", [1, 784], [0] * 784), "FP64"),
        (_one("BYTES", [1], ["bm90IGFuIGltYWdl"]), "not an image"),
        ({"inputs": []}, "exactly one input"),
        ({"outputs": [{"name": "label"}]}, "exactly one input"),
    ],
)
def test_malformed_tensors_get_a_4xx_with_a_json_error(service, body, message):
    r = requests.post(f"{service.url}/v2/models/{MODEL}/infer", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 400 and message in r.json()["error"], r.text
    unknown = requests.post(f"{service.url}/v2/models/nope/infer", json=body, headers=AUTH, timeout=30)
    assert unknown.status_code == 404 and "mnist-mlp" in unknown.json()["error"]
