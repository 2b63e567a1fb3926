"""An ASGI middleware in front of every route: tokens, the body-size limit, and one error format.

- Authentication: with ``MINDTRACE_API_TOKEN`` set, requests that change state (POST /retrain, POST and
  DELETE /registry/...) need ``Authorization: Bearer <token>``; with ``MINDTRACE_INFERENCE_TOKEN`` set, so
  do the inference routes. No header is a 401, a wrong token a 403. Tokens are compared in constant time
  and never logged or echoed.
- Bodies over ``max_body_bytes`` get a 413, whether they announce their length or stream it.
  The rest of a refused body is read and dropped first, so that the client always reads the 413. A form
  or multipart body sent to an inference route is a 415 (the routes take JSON).
- Every error leaves as JSON with a readable ``error`` string: BentoML's validation errors (which name no
  field), Starlette's plain-text 404 and 405, and BentoML's list-wrapped 4xx bodies are rewritten; a 500,
  or an exception that escapes a route, becomes a 500 with a request id that the log line carries too
  (``service.errors``). Successful responses pass through untouched, so the cost on the hot path is one
  status check.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import new_request_id, unexpected

INFERENCE_PATHS = ("/inference", "/inference/batch")
# 5xx answers the service gives on purpose, each with its own message: no model or no registry (503), a
# request past its time (504). Any other 5xx is a failure, answered with a request id only.
KNOWN_5XX = (503, 504)
# How much of a refused body is read and dropped before the answer, so the client reads it (see below).
DRAIN_BYTES = 16 * 1024 * 1024
# Bodies the inference routes refuse with a 415: forms and uploads, and BentoML's pickle (which BentoML's own
# API layer refuses in a served service too). Any other type is read as JSON, as BentoML reads it.
REFUSED_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded", "application/vnd.bentoml+pickle")
NOT_JSON = "send the body as JSON with 'Content-Type: application/json'; forms and uploads are not accepted"


class BodyTooLarge(Exception):
    pass


class Guard:
    def __init__(self, app: ASGIApp, max_body_bytes: int, api_token: str = "", inference_token: str = ""):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.api_token = api_token.encode()
        self.inference_token = inference_token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"].rstrip("/") or "/", scope["method"]
        token = {"inference": self.inference_token, "api": self.api_token}.get(guarded_by(method, path), b"")
        if token:
            refusal = _check_bearer(scope, token)
            if refusal:
                await _send_json(send, *refusal, headers=[(b"www-authenticate", b"Bearer")])
                return
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            await self._refuse(receive, send, 413, self._too_large())
            return
        if path in INFERENCE_PATHS and _media_type(scope) in REFUSED_TYPES:
            await self._refuse(receive, send, 415, {"error": NOT_JSON})
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge()
            return message

        state: dict[str, Any] = {}

        async def checked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                if message["status"] < 400 and received <= self.max_body_bytes:
                    state["pass"] = True
                    await send(message)
                else:
                    state["start"] = message
                return
            if state.get("pass"):
                await send(message)
                return
            state["body"] = state.get("body", b"") + message.get("body", b"")
            if not message.get("more_body"):
                start = state["start"]
                if received > self.max_body_bytes:
                    await _send_json(send, 413, self._too_large())
                    return
                if start["status"] >= 500 and start["status"] not in KNOWN_5XX:
                    state["request_id"] = request_id = new_request_id()
                    detail = state["body"][:2000].decode("utf-8", "replace")
                    body = unexpected(f"{method} {path} answered {start['status']}", detail, request_id)
                    await _send_json(send, 500, body)
                    return
                status, body = _normalize(start["status"], state["body"], method, path)
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in _REWRITTEN]
                await _send_json(send, status, body, headers=headers)

        try:
            await self.app(scope, limited_receive, checked_send)
        except BodyTooLarge:
            if not state.get("started"):
                await self._refuse(receive, send, 413, self._too_large(), received)
        except Exception as exc:  # noqa: BLE001 - whatever escapes a route is a logged 500, never a traceback
            if state.get("started"):  # answered already (a framework's 500, rewritten above): log it only
                unexpected(f"{method} {path} failed", "", state.get("request_id"), exc)
            else:
                await _send_json(send, 500, unexpected(f"{method} {path} failed", "", None, exc))

    async def _refuse(
        self, receive: Receive, send: Send, status: int, body: dict[str, str], received: int = 0
    ) -> None:
        """Read and drop the rest of the body (up to a bound), then answer ``status`` with ``body``.

        A server that answers and closes while the client is still sending makes the client's kernel see a
        reset, and the client may never read the 413; mature servers drain first, and so does this one.
        """
        more = True
        while more and received <= max(DRAIN_BYTES, 4 * self.max_body_bytes):
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away
            received += len(message.get("body", b""))
            more = message.get("more_body", False)
        await _send_json(send, status, body)

    def _too_large(self) -> dict[str, str]:
        return {"error": f"request body is larger than the limit of {self.max_body_bytes:,} bytes"}


_REWRITTEN = {b"content-length", b"content-type"}


def guarded_by(method: str, path: str) -> str | None:
    """Which token guards a route, when it is set: ``"inference"``, ``"api"`` (state changes), or None.

    >>> guarded_by("POST", "/registry/models/{name}/aliases/{alias}"), guarded_by("GET", "/jobs")
    ('api', None)
    >>> guarded_by("POST", "/v2/models/mnist-mlp/infer"), guarded_by("GET", "/v2/models/mnist-mlp")
    ('inference', None)
    >>> guarded_by("DELETE", "/registry/models/mnist-mlp/rollout"), guarded_by("GET", "/registry/models")
    ('api', None)
    """
    if path in INFERENCE_PATHS or (method == "POST" and path.startswith("/v2/") and path.endswith("/infer")):
        return "inference"
    if method == "POST" and path == "/feedback":  # from the clients that asked for the predictions
        return "inference"
    if method == "POST" and (path == "/retrain" or path.startswith("/registry/")):
        return "api"
    if method == "DELETE" and path.startswith("/registry/"):  # stopping a rollout
        return "api"
    return None


def _check_bearer(scope: Scope, token: bytes) -> tuple[int, dict[str, str]] | None:
    header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
    scheme, _, given = header.partition(b" ")
    if scheme.lower() != b"bearer" or not given.strip():
        return 401, {"error": "authentication required: send the header 'Authorization: Bearer <token>'"}
    if not hmac.compare_digest(given.strip(), token):
        return 403, {"error": "the bearer token is not valid for this endpoint"}
    return None


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _media_type(scope: Scope) -> str:
    header = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
    return header.split(b";", 1)[0].strip().lower().decode("latin-1")


def _normalize(status: int, raw: bytes, method: str, path: str) -> tuple[int, dict[str, Any]]:
    """An error response body as ``{"error": "<readable>", ...}``, and its status."""
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
        body = body[0]  # BentoML 1.4 wraps its 4xx bodies in a list
    if (
        isinstance(body, dict)
        and isinstance(body.get("detail"), list)
        and "validation error" in str(body.get("error", ""))
    ):
        return validation_answer(body["detail"])
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return status, body
    if status == 404:
        return 404, {"error": f"no such endpoint: {method} {path}; the API is listed at /docs"}
    if status == 405:
        return 405, {"error": f"{method} is not allowed on {path}; the API is listed at /docs"}
    text = raw.decode("utf-8", "replace").strip() if raw else ""
    if isinstance(body, dict) and "detail" in body:
        text = str(body["detail"])
    return status, {"error": text or f"request failed with status {status}"}


def validation_answer(errors: list[Any]) -> tuple[int, dict[str, Any]]:
    """Pydantic's errors for a request body as the answer to give: a 400 for a body that is not JSON, else a
    422 whose ``error`` names each field in one readable line (e.g. ``image: Field required``)."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, {"error": "the request body is not valid JSON"}
    return 422, {"error": describe_errors(errors), "detail": error_details(errors)}


def error_details(errors: list[Any]) -> list[dict[str, Any]]:
    """Where and why, for each pydantic error; not its ``input`` (the client's own data, sometimes megabytes)
    nor its ``url`` (which names pydantic's version)."""
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors
    ]


def describe_errors(errors: list[dict[str, Any]]) -> str:
    """Pydantic errors (BentoML's or FastAPI's) as one line naming each field: ``epochs: Input ...``."""
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body).encode()
    head = [
        *(headers or []),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": payload})
