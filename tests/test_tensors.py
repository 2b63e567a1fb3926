"""The Open Inference Protocol's tensors, read and written in process (``service.tensors``); the routes
themselves are tested against a real service with tritonclient in ``test_oip.py``."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from mindtrace.images import EXAMPLE_IMAGE, ImageLimits
from mindtrace.predict import batch_pixels
from mindtrace.preprocess import MEAN, STD
from service.tensors import TensorError, read_request, write_response

LIMITS = ImageLimits()
RNG = np.random.default_rng(3)
PIXELS = RNG.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)


def _request(tensor: dict, binary: bytes = b"", **extra) -> tuple[bytes, int | None]:
    header = json.dumps({"inputs": [tensor], **extra}).encode()
    return header + binary, (len(header) if binary else None)


@pytest.mark.parametrize("shape", [[3, 784], [3, 28, 28], [3, 1, 28, 28]])
def test_uint8_pixels_in_every_shape_as_json_and_as_binary(shape):
    as_json = _request({"name": "p", "datatype": "UINT8", "shape": shape, "data": PIXELS.ravel().tolist()})
    as_binary = _request(
        {"name": "p", "datatype": "UINT8", "shape": shape, "parameters": {"binary_data_size": PIXELS.size}},
        PIXELS.tobytes(),
    )
    for body, length in (as_json, as_binary):
        assert np.array_equal(read_request(body, length, LIMITS).pixels, PIXELS)


def test_normalised_fp32_pixels_round_trip_exactly():
    normalised = ((PIXELS / 255.0 - MEAN) / STD).astype("<f4")
    tensor = {
        "name": "x",
        "datatype": "FP32",
        "shape": [3, 784],
        "parameters": {"binary_data_size": 3 * 784 * 4},
    }
    assert np.array_equal(read_request(*_request(tensor, normalised.tobytes()), LIMITS).pixels, PIXELS)
    out_of_range = normalised.copy()
    out_of_range[0, 0, 0] = 99.0
    with pytest.raises(TensorError, match="normalised pixels"):
        read_request(*_request(tensor, out_of_range.tobytes()), LIMITS)


def test_base64_images_as_bytes_go_through_the_image_decoder():
    texts = [EXAMPLE_IMAGE, EXAMPLE_IMAGE]
    expected = batch_pixels(texts, LIMITS)
    as_json = _request({"name": "images", "datatype": "BYTES", "shape": [2], "data": texts})
    raw = b"".join(struct.pack("<I", len(t)) + t.encode() for t in texts)
    as_binary = _request(
        {"name": "images", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(raw)}},
        raw,
    )
    for body, length in (as_json, as_binary):
        assert np.array_equal(read_request(body, length, LIMITS).pixels, expected)
    not_an_image = base64.b64encode(b"no image here").decode()
    bad = {"name": "i", "datatype": "BYTES", "shape": [1], "data": [not_an_image]}
    with pytest.raises(TensorError, match=r"images\[0\]: not an image"):
        read_request(*_request(bad), LIMITS)


def _px(**changes) -> dict:
    """One UINT8 input of one zero image, with ``changes``."""
    return {"name": "p", "datatype": "UINT8", "shape": [1, 784], "data": [0] * 784, **changes}


@pytest.mark.parametrize(
    ("request_json", "binary", "message"),
    [
        ({"inputs": []}, b"", "exactly one input"),
        ({"inputs": "pixels"}, b"", "exactly one input"),
        ({"inputs": [_px(datatype="INT8")]}, b"", "INT8"),
        ({"inputs": [_px(shape=[1, 785], data=[0] * 785)]}, b"", "shape"),
        ({"inputs": [_px(shape=[0, 784], data=[])]}, b"", "N from 1"),
        ({"inputs": [_px(shape=[2, 784])]}, b"", "784"),
        ({"inputs": [_px(data=[256] * 784)]}, b"", "0 to 255"),
        ({"inputs": [_px(data=["a"] * 784)]}, b"", "numbers"),
        ({"inputs": [_px(datatype="FP32", data=[float("nan")] * 784)]}, b"", "normalised"),
        ({"inputs": [_px(parameters={"binary_data_size": 784})]}, b"\x00" * 10, "not within"),
        ({"inputs": [_px(parameters={"binary_data_size": 700})]}, b"\x00" * 784, "784 bytes"),
        (
            {"inputs": [_px()], "parameters": {"priority": 1, "timeout": 5}},
            b"",
            "parameters: priority, timeout",
        ),
        ({"inputs": [_px(parameters={"shared_memory_region": "r"})]}, b"", "shared_memory_region"),
        ({"inputs": [_px()], "outputs": [{"name": "logits"}]}, b"", "output 'logits'"),
        ({"inputs": [_px(name=None)]}, b"", "name"),
        (
            {
                "inputs": [
                    {"name": "i", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 6}}
                ]
            },
            struct.pack("<I", 9) + b"ab",
            "runs past",
        ),
    ],
)
def test_malformed_tensors_are_refused_with_a_message_naming_the_fault(request_json, binary, message):
    header = json.dumps(request_json).encode()
    with pytest.raises(TensorError, match=message) as caught:
        read_request(header + binary, len(header) if binary else None, LIMITS)
    assert caught.value.status == 400


def test_bodies_that_are_no_request():
    for body, length in ((b"{", None), (b"[]", None), (b"{}", 99), (b'{"inputs": []}xx', None)):
        with pytest.raises(TensorError):
            read_request(body, length, LIMITS)


def test_outputs_as_json_or_binary_and_only_those_asked_for():
    probs = RNG.random((2, 10)).astype(np.float32)
    tensor = {"name": "p", "datatype": "UINT8", "shape": [2, 784], "data": [0] * 1568}
    both = read_request(*_request(tensor, id="r1"), LIMITS)
    body, length = write_response(probs, ["a1", "b2"], both, "mnist-mlp", "3")
    answer = json.loads(body)
    assert length is None and answer["id"] == "r1" and answer["model_version"] == "3"
    by_name = {o["name"]: o for o in answer["outputs"]}
    assert by_name["prediction_id"] == {
        "name": "prediction_id",
        "datatype": "BYTES",
        "shape": [2],
        "data": ["a1", "b2"],
    }
    assert by_name["label"]["data"] == probs.argmax(1).tolist() and by_name["label"]["datatype"] == "INT64"
    assert np.allclose(by_name["probabilities"]["data"], probs.ravel()) and by_name["probabilities"][
        "shape"
    ] == [2, 10]

    labels = read_request(
        *_request(tensor, outputs=[{"name": "label", "parameters": {"binary_data": True}}]), LIMITS
    )
    body, length = write_response(probs, ["a1", "b2"], labels, "mnist-mlp", "3")
    header = json.loads(body[:length])
    assert [o["name"] for o in header["outputs"]] == ["label"]
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 16}
    assert np.frombuffer(body[length:], "<i8").tolist() == probs.argmax(1).tolist()

    ids = read_request(
        *_request(tensor, outputs=[{"name": "prediction_id", "parameters": {"binary_data": True}}]), LIMITS
    )
    body, length = write_response(probs, ["a1", "bb22"], ids, "mnist-mlp", "3")
    assert json.loads(body[:length])["outputs"][0]["parameters"] == {"binary_data_size": 14}
    assert body[length:] == b"\x02\x00\x00\x00a1\x04\x00\x00\x00bb22"
