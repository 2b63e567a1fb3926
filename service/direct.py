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

>>> svc.add_asgi_middleware(Direct, service=svc, paths=("/inference", "/inference/batch"))   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import bentoml
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.guard import validation_answer

CONTEXT = bentoml.Context()  # BentoML's request context: a context variable, whichever instance sets it


class Direct:
    """Serve ``POST`` on ``paths`` by calling the API methods of ``service`` whose routes they are."""

    def __init__(self, app: ASGIApp, service: Any, paths: tuple[str, ...]):
        self.app = app
        self.apis = {api.route: api for api in service.apis.values() if api.route in paths}
        if missing := set(paths) - set(self.apis):
            raise ValueError(f"{service.name} has no API method on {', '.join(sorted(missing))}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        api = self.apis.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if api is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            body = await request.body()  # the guard, outside, has bounded its size
        except ClientDisconnect:  # the answer has nowhere to go
            return
        try:
            # As BentoML reads a JSON body: an empty one is an empty object (then "Field required").
            data = api.input_spec.model_validate_json(body or b"{}")
        except ValidationError as exc:
            status, answer = validation_answer(exc.errors())
            response: Response = JSONResponse(answer, status)
        else:
            arguments = {field: getattr(data, field) for field in type(data).model_fields}
            with CONTEXT.in_request(request):
                output = await api.func(bentoml.get_current_service(), **arguments)
            response = output if isinstance(output, Response) else _json(output)
        await response(scope, receive, send)


def _json(output: BaseModel) -> Response:
    return Response(output.model_dump_json(), media_type="application/json")
