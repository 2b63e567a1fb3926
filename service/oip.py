"""The Open Inference Protocol (KServe V2) over REST, on the service's own port and workers, so that
tritonclient, KServe's clients and the gateways and load testers built for them work unchanged.

The model is the registered model this service follows (``mnist-mlp``); its version is the one being served,
and inference goes through the same adaptive batching and hot-swap as ``/inference``. A request naming a
version answers with that version or a 404; one the swap replaced mid-request is a 409, never an answer from
another version. Tensors are read and written by :mod:`service.tensors` (JSON, and the binary tensor data
extension that tritonclient uses by default).

>>> import tritonclient.http as triton                                        # doctest: +SKIP
>>> client = triton.InferenceServerClient("127.0.0.1:3000")                    # doctest: +SKIP
>>> pixels = triton.InferInput("pixels", [1, 28, 28], "UINT8")                 # doctest: +SKIP
>>> pixels.set_data_from_numpy(digit[None])                                     # doctest: +SKIP
>>> client.infer("mnist-mlp", [pixels]).as_numpy("label")                      # doctest: +SKIP
array([7])
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import bentoml
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

import mindtrace
from service.errors import error_response
from service.schemas import ErrorBody
from service.tensors import MAX_IMAGES, NORMALISATION, TensorError, read_request, write_response

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (KServe V2)"])
# The two infer routes below, as Starlette matches their path parameters (one path segment each).
INFER_PATH = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")
HEADER_LENGTH = "Inference-Header-Content-Length"
PLATFORM = "onnxruntime_onnx"
Version = Annotated[str, Path(description="a registered version; only the one being served answers")]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, str] = {}


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="the version being served (none before a model is loaded)")
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


SHAPES = "[N, 784], [N, 28, 28] or [N, 1, 28, 28]"
INPUTS = [
    TensorMetadata(
        name="pixels", datatype="UINT8", shape=[-1, 28, 28], parameters={"shapes": SHAPES, "pixels": "0-255"}
    ),
    TensorMetadata(
        name="normalized",
        datatype="FP32",
        shape=[-1, 28, 28],
        parameters={"shapes": SHAPES, "normalization": NORMALISATION},
    ),  # fmt: skip
    TensorMetadata(
        name="images",
        datatype="BYTES",
        shape=[-1],
        parameters={"content": "base64 PNG, JPEG, BMP or GIF, as POST /inference takes"},
    ),  # fmt: skip
]
OUTPUTS = [
    TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, 10]),
    TensorMetadata(name="label", datatype="INT64", shape=[-1]),
    TensorMetadata(
        name="prediction_id",
        datatype="BYTES",
        shape=[-1],
        parameters={"content": "the id POST /feedback takes with the true label"},
    ),  # fmt: skip
]


def _error(status: int, description: str) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": description}}


NOT_FOUND = _error(404, "no such model, or that version is not being served")
NOT_READY = _error(503, "no model is being served yet")
READY_ERRORS = {**NOT_FOUND, **NOT_READY}
INFER_ERRORS = {
    **READY_ERRORS, **_error(400, "a malformed tensor"), **_error(409, "the version was replaced")
}  # fmt: skip


def _service() -> Any:
    return bentoml.get_current_service()


def _unknown(name: str) -> JSONResponse | None:
    served = _service().watcher.name
    return (
        None if name == served else error_response(404, f"no model {name!r}: this server serves {served!r}")
    )


def _served_version(name: str, version: str | None) -> str | JSONResponse:
    """The version being served of model ``name`` (``version`` if given), or the error answer."""
    unknown = _unknown(name)
    if unknown is not None:
        return unknown
    current = _service().predictor.current
    if current is None:
        return error_response(503, f"model {name!r} is not ready: no version is being served yet")
    candidate = _service().predictor.candidate
    served = [current.version] + ([candidate.version] if candidate is not None else [])
    if version is not None and version not in served:
        serving = f"{served[0]} is" if len(served) == 1 else f"{' and '.join(served)} are"
        return error_response(404, f"version {version} of {name!r} is not being served ({serving})")
    return current.version if version is None else version


@router.get("", summary="Server metadata", response_model=ServerMetadata)
def server_metadata() -> dict[str, Any]:
    return {"name": "mindtrace", "version": mindtrace.__version__, "extensions": ["binary_tensor_data"]}


@router.get("/health/live", summary="Whether the server is live")
def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Whether the server can infer (a model is served)", responses=NOT_READY)
def ready() -> Any:
    if _service().predictor.current is None:
        return error_response(503, "not ready: no model is being served yet")
    return {"ready": True}


@router.get(
    "/models/{name}",
    summary="Model metadata: inputs, outputs, the version served",
    response_model=ModelMetadata,
    responses=NOT_FOUND,
)
@router.get(
    "/models/{name}/versions/{version}",
    summary="Model metadata of a version being served",
    response_model=ModelMetadata,
    responses=READY_ERRORS,
)
def model_metadata(name: str, version: Version | None = None) -> Any:
    found = _served_version(name, version) if version is not None else _unknown(name)
    if isinstance(found, JSONResponse):
        return found
    predictor = _service().predictor
    versions = [s.version for s in (predictor.current, predictor.candidate) if s is not None]
    return ModelMetadata(name=name, versions=versions, platform=PLATFORM, inputs=INPUTS, outputs=OUTPUTS)


@router.get("/models/{name}/ready", summary="Whether the model can infer", responses=READY_ERRORS)
@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="Whether this version is being served",
    responses=READY_ERRORS,
)
def model_ready(name: str, version: Version | None = None) -> Any:
    found = _served_version(name, version)
    return found if isinstance(found, JSONResponse) else {"name": name, "ready": True}


INFER_DOC = {
    "requestBody": {
        "required": True,
        "description": (
            "One input: UINT8 or FP32 pixels [N, 784], [N, 28, 28] or [N, 1, 28, 28], or BYTES [N] base64 "
            f"images, N up to {MAX_IMAGES}; data as JSON, or as binary data after the JSON with the "
            f"{HEADER_LENGTH} header (the binary tensor data extension)."
        ),
        "content": {
            "application/json": {
                "schema": {"type": "object", "required": ["inputs"]},
                "example": {
                    "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 784], "data": [0] * 784}]
                },
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/models/{name}/infer",
    summary="Infer with the version being served",
    openapi_extra=INFER_DOC,
    responses=INFER_ERRORS,
)
@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Infer with this version, if it is being served",
    openapi_extra=INFER_DOC,
    responses=INFER_ERRORS,
)
async def infer(request: Request, name: str, version: Version | None = None) -> Response:
    """Probabilities and labels for the input's images; outputs as JSON or binary data, as asked.

    The service answers these paths through ``service.direct`` (``INFER_PATH``), without FastAPI's routing:
    this route gives the OpenAPI document its entry, and serves a request that reaches it all the same."""
    return await answer_infer(request, name, version)


async def answer_infer(request: Request, name: str, version: str | None = None) -> Response:
    """The answer of ``infer``: its handler on the direct path too."""
    svc = _service()
    found = _served_version(name, version)
    if isinstance(found, JSONResponse):
        return found
    length = request.headers.get(HEADER_LENGTH.lower())
    try:
        parsed = read_request(await request.body(), _length(length), svc.limits)
    except TensorError as exc:
        return error_response(exc.status, str(exc))
    answer = await svc.classify(parsed.pixels, request.headers, version)
    if isinstance(answer, JSONResponse):
        return answer
    probs, model, ids = answer
    if version is not None and model.version != version:
        return error_response(409, f"version {version} was replaced by {model.version} during the request")
    body, header_length = write_response(probs, ids, parsed, name, model.version)
    if header_length is None:
        return Response(body, media_type="application/json")
    headers = {HEADER_LENGTH: str(header_length)}
    return Response(body, media_type="application/octet-stream", headers=headers)


def _length(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise TensorError(f"{HEADER_LENGTH} must be a number of bytes")
    return int(value)
