"""The control routes: retraining jobs, the registry, and what this worker serves.

A FastAPI app mounted into the BentoML service (BentoML routes take no path parameters). The registry routes
are thin: ``mindtrace.registry.Registry`` answers, as it does for the CLI, and its errors map to 404 (unknown
model, version or alias), 422 (a bad query or alias) and 503 (the registry cannot be reached).
"""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Annotated, Any

import bentoml
from fastapi import FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mindtrace.jobs import JOB_ID_PATTERN, JobConflict, JobState
from mindtrace.registry.errors import RegistryError
from mindtrace.registry.filters import CONDITION_PATTERN, ORDER_PATTERN
from mindtrace.registry.names import ALIAS_PATTERN
from mindtrace.registry.schemas import AliasEvent, ModelSummary, VersionInfo
from mindtrace.train_config import TrainRequest
from service import monitor, oip, rollout
from service.errors import domain_error, error_response
from service.guard import describe_errors, error_details
from service.schemas import AliasMove, ErrorBody, ModelName

app = FastAPI(title="mindtrace control", docs_url=None, redoc_url=None, openapi_url=None)
app.include_router(oip.router)  # the Open Inference Protocol's /v2 routes
app.include_router(monitor.router)  # POST /feedback, GET /monitoring
app.include_router(rollout.router)  # POST, GET, DELETE /registry/models/{name}/rollout

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        404: "unknown model, version, alias or job",
        422: "invalid parameters; the message names the field",
        503: "the registry cannot be reached",
    }.items()
}
# The registry checks names, aliases and filters itself (422); the patterns only say so in the OpenAPI
# document. They hold Python regular expressions (lookaheads included), which pydantic's own pattern check
# does not run, hence json_schema_extra rather than pattern=.
Alias = Annotated[
    str,
    Path(
        description="letters, digits, '_' or '-', starting with a letter or '_'; not 'latest' or v<number>",
        json_schema_extra={"pattern": ALIAS_PATTERN},
    ),
]
# POST /retrain reads its body itself (JSON or an uploaded file), so its schema is written here; the models
# it refers to go into the document's components (service.openapi.complete).
TRAIN_SCHEMA = TrainRequest.model_json_schema(ref_template="#/components/schemas/{model}")
SCHEMAS: dict[str, Any] = TRAIN_SCHEMA.pop("$defs", {})
RETRAIN_EXAMPLE = {
    "epochs": 3,
    "learning_rate": 0.003,
    "batch_size": 256,
    "hidden_dims": [256, 128],
    "dropout": 0.2,
    "seed": 7,
    "num_train": 20000,
    "num_val": 5000,
    "promotion": {"policy": "if-better", "metric": "test_acc", "margin": 0.0},
}


def _service() -> Any:
    return bentoml.get_current_service()


@app.exception_handler(RequestValidationError)
async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    return _fields_error(exc.errors())


@app.exception_handler(StarletteHTTPException)
async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    headers = exc.headers
    if exc.status_code == 405:  # Starlette names the methods of the first route on the path only
        headers = {**(headers or {}), "Allow": ", ".join(_allowed(request.scope["path"]))}
    return error_response(exc.status_code, str(exc.detail), headers=headers)


def _allowed(path: str) -> list[str]:
    """Every method some route of this app takes on ``path`` (GET, POST and DELETE on a rollout)."""
    methods: set[str] = set()
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path_regex.match(path):
            methods |= route.methods
    return sorted(methods)


@app.exception_handler(RegistryError)
async def _registry(_: Request, exc: RegistryError) -> JSONResponse:
    return domain_error(exc)


def _fields_error(errors: list[Any]) -> JSONResponse:
    return error_response(422, describe_errors(errors), detail=error_details(errors))


@app.post(
    "/retrain",
    status_code=202,
    summary="Train a new version in the background; the promotion gate decides whether it serves",
    responses={
        202: {
            "content": {
                "application/json": {"example": {"job_id": "20261123-170102-a1b2c3", "status": "queued"}}
            }
        },
        409: {"model": ErrorBody, "description": "another job is running; its id is in job_id"},
        422: ERRORS[422],
    },
    openapi_extra={
        "requestBody": {
            "required": False,  # an empty body trains with the defaults (`mindtrace config` shows them)
            "content": {
                "application/json": {
                    "schema": TRAIN_SCHEMA,
                    "example": RETRAIN_EXAMPLE,
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"config": {"type": "string", "format": "binary"}},
                        "required": ["config"],
                    },
                    "example": {"config": "retrain.yaml (INI: [train] and [promotion] sections)"},
                },
            },
        }
    },
)
async def retrain(request: Request) -> JSONResponse:
    """JSON training parameters, or a JSON, YAML or INI file uploaded as the multipart field ``config``."""
    try:
        train_request = await _read_train_request(request)
    except ValidationError as exc:
        return _fields_error(exc.errors())
    except ValueError as exc:
        return error_response(422, str(exc))
    svc = _service()
    try:
        job = await run_in_threadpool(svc.retrain, train_request)
    except JobConflict as exc:
        return error_response(409, f"{exc}; follow it at /jobs/{exc.job.id}", job_id=exc.job.id)
    return JSONResponse({"job_id": job.id, "status": job.status}, status_code=202)


async def _read_train_request(request: Request) -> TrainRequest:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("config")
        if upload is None or isinstance(upload, str):
            raise ValueError("config: upload the config file as the multipart field 'config'")
        text = (await upload.read()).decode("utf-8", "replace")
        return TrainRequest.from_text(text, _suffix(upload.filename or "", text))
    body = await request.body()
    if not body.strip():
        return TrainRequest()
    try:
        data = json.loads(body)
    except ValueError:
        raise ValueError("body: not valid JSON; send training parameters as a JSON object") from None
    if not isinstance(data, dict):
        raise ValueError("body: training parameters must be a JSON object")
    return TrainRequest.model_validate(data)


def _suffix(filename: str, text: str) -> str:
    """The file's type from its name, else from its first character (``{`` JSON, ``[`` INI, else YAML)."""
    suffix = PurePath(filename).suffix.lower()
    if suffix:
        return suffix
    first = text.lstrip()[:1]
    return {"{": ".json", "[": ".ini"}.get(first, ".yaml")


@app.get("/jobs", summary="Retraining jobs, newest first")
async def jobs(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[JobState]:
    return await run_in_threadpool(_service().jobs.list, limit)


@app.get(
    "/jobs/{job_id}",
    summary="One job: status, progress, version, gate decision",
    response_model=JobState,
    responses={404: ERRORS[404]},
)
async def job(job_id: Annotated[str, Path(json_schema_extra={"pattern": JOB_ID_PATTERN})]) -> Any:
    try:
        return await run_in_threadpool(_service().jobs.get, job_id)
    except KeyError:
        return error_response(404, f"no job {job_id!r}; GET /jobs lists them")


@app.get(
    "/registry/models",
    summary="Registered models with their aliases and latest versions",
    responses={503: ERRORS[503]},
)
def models() -> list[ModelSummary]:
    return _service().registry.list_models()


@app.get(
    "/registry/models/{name}/versions",
    summary="Versions with metrics, params, tags and aliases",
    responses=ERRORS,
)
def versions(
    name: ModelName,
    where: Annotated[
        list[str] | None,
        Query(
            description="filters, all must hold: metrics.test_acc>=0.98, alias=champion, params.train.seed=3",
            json_schema_extra={"items": {"type": "string", "pattern": CONDITION_PATTERN}},
        ),
    ] = None,
    order_by: Annotated[
        str,
        Query(
            description="KEY [asc|desc], e.g. 'metrics.test_acc desc'; newest version first when empty",
            json_schema_extra={"pattern": ORDER_PATTERN},
        ),
    ] = "",
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> list[VersionInfo]:
    return _service().registry.list_versions(name, where=where or [], order_by=order_by, limit=limit)


@app.get(
    "/registry/models/{name}/versions/{version_or_alias}",
    summary="One version's full metadata",
    responses=ERRORS,
)
def version(name: ModelName, version_or_alias: str) -> VersionInfo:
    return _service().registry.get_version(name, version_or_alias)


@app.get("/registry/models/{name}/history", summary="Every alias move, oldest first", responses=ERRORS)
def history(name: ModelName, alias: str | None = None) -> list[AliasEvent]:
    return _service().registry.alias_history(name, alias)


@app.post(
    "/registry/models/{name}/aliases/{alias}",
    summary="Point an alias at a version (promotion, rollback); the service serves the champion",
    responses={
        **ERRORS,
        409: {"model": ErrorBody, "description": "the version cannot be loaded; alias unchanged"},
    },
    response_model=AliasEvent,
)
def move_alias(name: ModelName, alias: Alias, move: AliasMove) -> Any:
    return _service().move_alias(name, alias, move.version)


@app.post(
    "/registry/models/{name}/aliases/{alias}/rollback",
    summary="Move an alias back to the version it held before its last move",
    responses=ERRORS,
)
def rollback(name: ModelName, alias: Alias) -> AliasEvent:
    return _service().rollback(name, alias)


@app.get("/docs", include_in_schema=False)
def docs() -> RedirectResponse:
    # BentoML's Swagger UI lives at / with its assets bundled (no CDN), reading /docs.json.
    return RedirectResponse("/")


@app.get("/model", summary="The model this worker serves, and the last failed swap if any")
def served() -> dict[str, Any]:
    return _service().serving_status()
