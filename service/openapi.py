"""The OpenAPI document at /docs.json, made to tell the truth: every status each route can answer, with its
error body, and request bodies that say they are required.

BentoML writes the document from the service (its inference routes, with its own generic 400/404/500) and
from the mounted FastAPI app (the control routes). ``complete`` rewrites that document once per worker;
``Document`` is the ASGI middleware (BentoML's documented extension point) that serves the rewritten one.

>>> spec = {"paths": {"/inference": {"post": {"requestBody": {}, "responses": {"200": {}, "404": {}}}}}}
>>> sorted(complete(spec, tokens={"inference"})["paths"]["/inference"]["post"]["responses"])
['200', '400', '401', '403', '413', '415', '422', '500', '503']
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.guard import INFERENCE_PATHS, guarded_by
from service.schemas import ErrorBody

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
WHY = {
    "400": "invalid JSON, base64 or image bytes, or an animated image",
    "401": "no bearer token, where the service requires one",
    "403": "a bearer token that is not valid for this route",
    "404": "unknown model, version, alias or job",
    "409": "the registry's state forbids the move (see the message)",
    "413": "the body or the image is too large",
    "415": "an image format the service does not accept",
    "422": "invalid parameters or body; the message names the field",
    "500": "a failure of the service; the body holds a request id that its log carries",
    "503": "no model is served yet, or the registry cannot be reached",
}


def complete(spec: dict[str, Any], tokens: set[str], schemas: dict[str, Any] | None = None) -> dict[str, Any]:
    """``spec`` with every route's error answers listed, each with the ``ErrorBody`` schema.

    ``tokens``: the tokens configured (``"api"``, ``"inference"``; see ``guard.guarded_by``); the routes they
    guard answer 401 and 403 too, and say they need the bearer scheme. ``schemas``: component schemas that
    hand-written request bodies refer to.
    """
    spec.setdefault("components", {}).setdefault("schemas", {}).update(
        {**(schemas or {}), "ErrorBody": ErrorBody.model_json_schema()}
    )
    for name in ("InvalidArgument", "NotFound", "InternalServerError"):  # BentoML's generic error bodies
        spec["components"]["schemas"].pop(name, None)
    if tokens:
        spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if isinstance(op, dict) and "responses" in op:
                _complete_operation(path, method.upper(), op, tokens)
    return _openapi_30(spec)


def _complete_operation(path: str, method: str, op: dict[str, Any], tokens: set[str]) -> None:
    responses = op["responses"]
    if path in INFERENCE_PATHS:  # BentoML lists 400, 404 and 500 on each, with bodies of its own
        for code in ("400", "404", "500"):
            responses.pop(code, None)
    codes = {"500"}
    if "requestBody" in op:
        if path in INFERENCE_PATHS:  # BentoML does not say so; the mounted routes say what they mean
            op["requestBody"]["required"] = True
        codes |= {"400", "413", "422"}
    if path in INFERENCE_PATHS:
        codes |= {"415", "503"}
    if path.startswith("/registry/"):
        codes.add("503")
    if "{" in path:
        codes.add("404")
    if op.get("parameters"):
        codes.add("422")
    if path.endswith("/rollback"):
        codes.add("409")
    if path == "/readyz":
        codes.add("503")
    if guarded_by(method, path) in tokens:
        codes |= {"401", "403"}
        op["security"] = [{"bearer": []}]
    for code in sorted(codes):  # every one an error, answered with ErrorBody
        responses.setdefault(code, {"description": WHY[code]})
        responses[code]["content"] = {"application/json": {"schema": ERROR_REF}}


def _openapi_30(node: Any, nullable: bool = True) -> Any:
    """Pydantic and FastAPI write JSON Schema 2020-12; BentoML's document is OpenAPI 3.0, which says some of
    it differently: ``anyOf: [X, {type: null}]`` is X with ``nullable: true`` (in a parameter, which is
    absent rather than null, X alone), and a numeric ``exclusiveMaximum: 1`` is ``maximum: 1`` with
    ``exclusiveMaximum: true``.

    >>> _openapi_30({"anyOf": [{"type": "number", "exclusiveMaximum": 1.0}, {"type": "null"}]})
    {'type': 'number', 'exclusiveMaximum': True, 'maximum': 1.0, 'nullable': True}
    """
    if isinstance(node, list):
        return [_openapi_30(n, nullable) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _openapi_30(v, nullable and k != "parameters") for k, v in node.items()}
    for bound, limit in (("exclusiveMaximum", "maximum"), ("exclusiveMinimum", "minimum")):
        value = node.get(bound)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            node[limit], node[bound] = value, True
    options = node.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        if len(rest) == 1:
            del node["anyOf"]
            node = {**rest[0], **node, **({"nullable": True} if nullable else {})}
    return node


class Document:
    """Serves ``GET /docs.json`` as :func:`complete` rewrites it (built on the first request, then kept)."""

    def __init__(self, app: ASGIApp, tokens: set[str], schemas: dict[str, Any]):
        self.app = app
        self.tokens = tokens
        self.schemas = schemas
        self.body: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/docs.json" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if self.body is None:
            parts: list[Message] = []

            async def keep(message: Message) -> None:
                parts.append(message)

            await self.app(scope, receive, keep)
            raw = b"".join(m.get("body", b"") for m in parts if m["type"] == "http.response.body")
            self.body = json.dumps(complete(json.loads(raw), self.tokens, self.schemas)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})
