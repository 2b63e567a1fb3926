"""The inference routes' HTTP requests, handed straight to the service's API methods.

BentoML's generic API layer costs more per request than the rest of its stack together: for each call it
injects dependencies, binds the method's signature, builds its IO models and converts the answer. Measured
with wrk on a no-op route (DESIGN.md, "A direct path for the inference routes"), BentoML's API layer answered
about a third as many requests a second as its middleware stack alone. For the routes it is given, this
middleware (BentoML's documented extension point) does only what those methods need:

- it validates the body with the input model that BentoML derives from the method's signature, so the
  constraints and the OpenAPI document stay the method's, and an invalid body gets the answer the guard gives
  BentoML's own validation errors (``service.guard.validation_answer``);
- it runs the method inside BentoML's request context (``bentoml.Context().request`` works as usual);
- it sends what the method returns: a pydantic model as JSON, a Starlette response as it is.

Everything outside the API layer still applies, because it sits outside this middleware: BentoML's request
metrics, its timeout and access log, the guard (tokens, the body limit, the error format).

>>> routes = direct_routes(svc, ("inference", "inference_batch"))   # doctest: +SKIP
>>> svc.add_asgi_middleware(Direct, service=svc, routes=routes)        # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import bentoml
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.guard import validation_answer

CONTEXT = bentoml.Context()  # BentoML's request context: a context variable, whichever instance sets it


def direct_routes(service: Any, names: tuple[str, ...]) -> dict[str, str]:
    """The route of each API method ``names`` of ``service``: ``{"/inference": "inference", ...}``."""
    return {service.apis[name].route: name for name in names}


class Direct:
    """Serve ``POST`` on ``routes`` (route -> API method name) by calling the methods of ``service``."""

    def __init__(self, app: ASGIApp, service: Any, routes: dict[str, str]):
        self.app = app
        self.apis = {route: service.apis[name] for route, name in routes.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        api = self.apis.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if api is None:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away: the answer has nowhere to go
            return
        try:
            # As BentoML reads a JSON body: an empty one is an empty object (then "Field required").
            data = api.input_spec.model_validate_json(body or b"{}")
        except ValidationError as exc:
            status, answer = validation_answer(exc.errors())
            response: Response = JSONResponse(answer, status)
        else:
            arguments = {field: getattr(data, field) for field in type(data).model_fields}
            with CONTEXT.in_request(Request(scope)):
                output = await api.func(bentoml.get_current_service(), **arguments)
            response = output if isinstance(output, Response) else _json(output)
        await response(scope, receive, send)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (the guard, outside, has bounded its size); None if the client disconnected."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _json(output: BaseModel) -> Response:
    return Response(output.model_dump_json(), media_type="application/json")
