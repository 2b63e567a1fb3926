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

The Open Inference Protocol's infer route is a route of the mounted FastAPI app, where a request passed
through Starlette's router, the mount, FastAPI's own middleware, its router and its dependency solving before
its handler, which cost as much as everything else the request needed: with binary tensor data, V2 infer
answered 0.61x the requests a second of ``/inference``, and 1.17x once ``routes`` handed its paths straight
to the handler (wrk, 32 connections). The FastAPI route calls the same handler and keeps its place in the
OpenAPI document.

Everything outside the API layer still applies, because it sits outside this middleware: BentoML's request
metrics, its timeout and access log, the guard (tokens, the body limit, the error format).

>>> svc.add_asgi_middleware(Direct, service=svc, paths=("/inference", "/inference/batch"))   # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import bentoml
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.guard import validation_answer

CONTEXT = bentoml.Context()  # BentoML's request context: a context variable, whichever instance sets it
# A handler takes the request and the named groups of its path's pattern.
Handler = Callable[..., Awaitable[Response]]


class Direct:
    """Serve ``POST`` on ``paths`` by calling the API methods of ``service`` whose routes they are, and on
    the paths that a pattern of ``routes`` matches by calling its handler with the pattern's named groups."""

    def __init__(
        self,
        app: ASGIApp,
        service: Any,
        paths: tuple[str, ...],
        routes: Sequence[tuple[re.Pattern[str], Handler]] = (),
    ):
        self.app = app
        self.apis = {api.route: api for api in service.apis.values() if api.route in paths}
        if missing := set(paths) - set(self.apis):
            raise ValueError(f"{service.name} has no API method on {', '.join(sorted(missing))}")
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._handler(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        try:
            response = await handler(Request(scope, receive))
        except ClientDisconnect:  # the answer has nowhere to go
            return
        await response(scope, receive, send)

    def _handler(self, scope: Scope) -> Callable[[Request], Awaitable[Response]] | None:
        path = scope["path"]
        api = self.apis.get(path)
        if api is not None:
            return partial(_call, api)
        for pattern, handler in self.routes:
            if match := pattern.fullmatch(path):
                return partial(handler, **match.groupdict())
        return None


async def _call(api: Any, request: Request) -> Response:
    """What BentoML's API layer would answer for ``api``, without it."""
    body = await request.body()  # the guard, outside, has bounded its size
    try:
        # As BentoML reads a JSON body: an empty one is an empty object (then "Field required").
        data = api.input_spec.model_validate_json(body or b"{}")
    except ValidationError as exc:
        status, answer = validation_answer(exc.errors())
        return JSONResponse(answer, status)
    arguments = {field: getattr(data, field) for field in type(data).model_fields}
    with CONTEXT.in_request(request):
        output = await api.func(bentoml.get_current_service(), **arguments)
    return output if isinstance(output, Response) else _json(output)


def _json(output: BaseModel) -> Response:
    return Response(output.model_dump_json(), media_type="application/json")
