"""The Open Inference Protocol's tensors: a V2 inference request (JSON, or JSON followed by binary tensor
data) read into the uint8 pixels the model takes, and the model's outputs written back.

One input tensor per request, told apart by its datatype (its name is free): ``UINT8`` raw pixels or ``FP32``
normalised pixels, shaped ``[N, 784]``, ``[N, 28, 28]`` or ``[N, 1, 28, 28]``, or ``BYTES`` ``[N]`` holding
base64 images, which go through the same decoding and limits as ``/inference``. FP32 values are mapped back
to the 256 pixel levels the model was trained on (normalised pixels round-trip exactly). Outputs:
``probabilities`` FP32 ``[N, 10]`` and ``label`` INT64 ``[N]``, as JSON or, when asked for, as binary data
(the binary tensor data extension: little-endian, row-major, after the JSON header). Anything else is a
:class:`TensorError`, a 400 naming what is wrong.

>>> body = b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 784], "data": [0]}]}'
>>> read_request(body, None, ImageLimits())
Traceback (most recent call last):
service.tensors.TensorError: input 'x': shape holds 784 values, data has 1
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mindtrace.images import ImageLimits, ImageRejected
from mindtrace.predict import batch_pixels
from mindtrace.preprocess import MEAN, STD

MAX_IMAGES = 1024  # as POST /inference/batch
PIXEL_SHAPES = ((784,), (28, 28), (1, 28, 28))
OUTPUTS = {"probabilities": "FP32", "label": "INT64", "prediction_id": "BYTES"}
NUMPY = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}
# Normalised pixels (x / 255 - MEAN) / STD lie in this range; a little beyond is rounding.
FP32_RANGE = ((0 - MEAN) / STD - 0.01, (1 - MEAN) / STD + 0.01)
NORMALISATION = f"(pixel / 255 - {MEAN}) / {STD}, pixels 0-255 white on black"


class TensorError(ValueError):
    """A request the protocol or this model cannot take; ``status`` is the HTTP status (400, or 413 for an
    image over the pixel limit)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class InferRequest:
    """What a V2 inference request asks: its images as pixels, which outputs, and whether each is binary."""

    pixels: np.ndarray
    outputs: dict[str, bool] = field(default_factory=dict)  # output name -> as binary data
    id: str | None = None


def read_request(body: bytes, header_length: int | None, limits: ImageLimits) -> InferRequest:
    """Read a V2 inference request; ``header_length`` is the ``Inference-Header-Content-Length`` header
    (the JSON's length when binary tensor data follows it), None without it."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise TensorError(f"Inference-Header-Content-Length {header_length} is not within the body")
    header, binary = (body[:header_length], body[header_length:]) if header_length else (body, b"")
    try:
        request = json.loads(header)
    except (ValueError, RecursionError):
        raise TensorError("the request is not valid JSON") from None
    if not isinstance(request, dict):
        raise TensorError("the request must be a JSON object")
    _only(request, {"id", "parameters", "inputs", "outputs"}, "request field")
    parameters = _object(request.get("parameters", {}), "parameters")
    _only(parameters, {"binary_data_output"}, "parameter")
    binary_out = parameters.get("binary_data_output", False)
    if not isinstance(binary_out, bool):
        raise TensorError("parameter 'binary_data_output' must be true or false")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise TensorError("send exactly one input tensor: UINT8 or FP32 pixels, or BYTES base64 images")
    pixels, used = _pixels(_object(inputs[0], "input"), binary, limits)
    if used != len(binary):
        raise TensorError(f"{len(binary) - used} bytes of binary data follow the inputs that no input claims")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise TensorError("id must be a string")
    return InferRequest(pixels, _outputs(request.get("outputs"), binary_out), request_id)


def write_response(
    probs: np.ndarray, ids: list[str], request: InferRequest, model: str, version: str
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it (else None).

    ``ids`` are the prediction ids (``POST /feedback`` takes them back), a BYTES output.
    """
    values = {"probabilities": probs.astype("<f4"), "label": probs.argmax(axis=1).astype("<i8")}
    outputs, blobs = [], []
    for name, binary in request.outputs.items():
        shape = [len(ids)] if name == "prediction_id" else list(values[name].shape)
        tensor: dict[str, Any] = {"name": name, "datatype": OUTPUTS[name], "shape": shape}
        if binary:
            blobs.append(_bytes_tensor(ids) if name == "prediction_id" else values[name].tobytes())
            tensor["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            tensor["data"] = ids if name == "prediction_id" else values[name].ravel().tolist()
        outputs.append(tensor)
    answer: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        answer["id"] = request.id
    header = json.dumps(answer).encode()
    return header + b"".join(blobs), len(header) if blobs else None


def _bytes_tensor(texts: list[str]) -> bytes:
    """A BYTES tensor as binary data: each element's length (4 bytes, little-endian), then the element.

    >>> _bytes_tensor(["ab"])
    b'\\x02\\x00\\x00\\x00ab'
    """
    return b"".join(len(t).to_bytes(4, "little") + t.encode() for t in texts)


def _pixels(tensor: dict[str, Any], binary: bytes, limits: ImageLimits) -> tuple[np.ndarray, int]:
    """The input's images as uint8 pixels ``[n, 28, 28]``, and how many bytes of binary data it used."""
    name = tensor.get("name")
    if not isinstance(name, str):
        raise TensorError("the input needs a name")
    what = f"input {name!r}"
    _only(tensor, {"name", "datatype", "shape", "parameters", "data"}, f"{what} field")
    parameters = _object(tensor.get("parameters", {}), f"{what} parameters")
    _only(parameters, {"binary_data_size"}, f"{what} parameter")
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise TensorError(f"{what}: shape must be a list of non-negative integers")
    if datatype == "BYTES":
        texts, used = _texts(tensor, shape, binary, what)
        try:
            return batch_pixels(texts, limits), used
        except ImageRejected as exc:
            raise TensorError(f"{what}: {exc}", exc.status) from None
    if datatype not in ("UINT8", "FP32"):
        raise TensorError(f"{what}: datatype {datatype!r}; send UINT8 or FP32 pixels, or BYTES base64 images")
    if not shape or tuple(shape[1:]) not in PIXEL_SHAPES or not 1 <= shape[0] <= MAX_IMAGES:
        shapes = "[N, 784], [N, 28, 28] or [N, 1, 28, 28]"
        raise TensorError(f"{what}: shape {shape}; send {shapes} with N from 1 to {MAX_IMAGES}")
    count = int(np.prod(shape))
    size = parameters.get("binary_data_size")
    if size is not None:
        array, used = _binary(binary, size, count * NUMPY[datatype].itemsize, what), size
        array = np.frombuffer(array, NUMPY[datatype])
    else:
        array, used = _json_numbers(tensor.get("data"), count, datatype, what), 0
    if datatype == "FP32":
        if not np.isfinite(array).all() or array.min() < FP32_RANGE[0] or array.max() > FP32_RANGE[1]:
            raise TensorError(f"{what}: FP32 values must be normalised pixels, {NORMALISATION}")
        array = np.rint((array.astype(np.float64) * STD + MEAN) * 255).clip(0, 255)
    return array.astype(np.uint8).reshape(shape[0], 28, 28), used


def _texts(tensor: dict[str, Any], shape: list[int], binary: bytes, what: str) -> tuple[list[str], int]:
    if len(shape) != 1 or not 1 <= shape[0] <= MAX_IMAGES:
        raise TensorError(f"{what}: a BYTES input has shape [N], N from 1 to {MAX_IMAGES} base64 images")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is None:
        data = tensor.get("data")
        if not isinstance(data, list) or len(data) != shape[0] or not all(isinstance(t, str) for t in data):
            raise TensorError(f"{what}: data must be {shape[0]} base64 strings")
        return data, 0
    raw, texts, at = _binary(binary, size, None, what), [], 0
    while at < len(raw):  # each element: a 4-byte little-endian length, then the bytes
        if at + 4 > len(raw) or at + 4 + (n := struct.unpack_from("<I", raw, at)[0]) > len(raw):
            raise TensorError(f"{what}: BYTES element {len(texts)} runs past its binary data")
        texts.append(raw[at + 4 : at + 4 + n].decode("ascii", "replace"))
        at += 4 + n
    if len(texts) != shape[0]:
        raise TensorError(f"{what}: shape [{shape[0]}], binary data holds {len(texts)} elements")
    return texts, size


def _binary(binary: bytes, size: Any, expected: int | None, what: str) -> bytes:
    if type(size) is not int or size < 0 or size > len(binary):
        raise TensorError(f"{what}: binary_data_size {size!r} is not within the binary data sent")
    if expected is not None and size != expected:
        raise TensorError(f"{what}: shape and datatype make {expected} bytes, binary_data_size says {size}")
    return binary[:size]


def _json_numbers(data: Any, count: int, datatype: str, what: str) -> np.ndarray:
    if not isinstance(data, list):
        raise TensorError(f"{what}: data must be a list of numbers (or send it as binary data)")
    try:
        array = np.array(data, dtype=np.float64).ravel()  # nested lists are row-major, as the protocol says
    except (ValueError, TypeError):
        raise TensorError(f"{what}: data must hold only numbers") from None
    if array.size != count:
        raise TensorError(f"{what}: shape holds {count} values, data has {array.size}")
    if datatype == "UINT8" and ((array < 0) | (array > 255) | (array != np.rint(array))).any():
        raise TensorError(f"{what}: UINT8 values must be whole numbers from 0 to 255")
    return array


def _outputs(requested: Any, binary_default: bool) -> dict[str, bool]:
    if requested is None:
        return dict.fromkeys(OUTPUTS, binary_default)
    if not isinstance(requested, list) or not requested:
        raise TensorError("outputs must be a non-empty list")
    chosen = {}
    for output in requested:
        output = _object(output, "output")
        name = output.get("name")
        if name not in OUTPUTS:
            raise TensorError(f"output {name!r}: this model has outputs {', '.join(OUTPUTS)}")
        _only(output, {"name", "parameters"}, f"output {name!r} field")
        parameters = _object(output.get("parameters", {}), f"output {name!r} parameters")
        _only(parameters, {"binary_data"}, f"output {name!r} parameter")
        binary = parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise TensorError(f"output {name!r}: binary_data must be true or false")
        chosen[name] = binary
    return chosen


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TensorError(f"{what} must be a JSON object")
    return value


def _only(found: dict[str, Any], known: set[str], what: str) -> None:
    unknown = sorted(set(found) - known)
    if unknown:
        raise TensorError(f"unsupported {what}{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
