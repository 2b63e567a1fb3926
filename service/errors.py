"""One place that turns errors into HTTP answers: a status and a JSON body with a readable ``error``.

- The domain's errors map by type (``STATUS``): an unknown model, version, alias or job is a 404, a bad query
  or name a 422, a registry state that forbids the move (a rollback with nothing to go back to) a 409, a
  registry that cannot be reached a 503. A refused image carries its own status (``ImageRejected.status``).
- Anything else is unexpected: a 500 whose body holds a request id and nothing more, while the log line with
  the traceback carries the same id (``unexpected``). No traceback, path or version string leaves the service.
- Framework answers (BentoML's validation errors, Starlette's 404 and 405) are rewritten into the same shape
  by ``service.guard``, which also catches whatever escapes a route.

>>> status_of(NotFoundError("no model 'x'")), status_of(KeyError("x"))
(404, 500)
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from starlette.responses import JSONResponse

from mindtrace.registry.errors import (
    ConflictError,
    InvalidQueryError,
    NotFoundError,
    RegistryUnavailableError,
)

log = logging.getLogger("mindtrace.service")

STATUS: dict[type[Exception], int] = {
    NotFoundError: 404,
    InvalidQueryError: 422,
    ConflictError: 409,
    RegistryUnavailableError: 503,
}


def status_of(exc: Exception) -> int:
    """The HTTP status for a domain error (the nearest class in ``STATUS``); 500 for anything else."""
    return next((STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS), 500)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """``{"error": message, **extra}`` with ``status``.

    >>> error_response(409, "alias 'champion' has no earlier version").body
    b'{"error":"alias \\'champion\\' has no earlier version"}'
    """
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def domain_error(exc: Exception) -> JSONResponse:
    """The answer for a domain error; an exception that is none is handed to :func:`unexpected`.

    >>> domain_error(ConflictError("no earlier version")).status_code
    409
    >>> import json
    >>> sorted(json.loads(domain_error(RuntimeError("MLflow said INTERNAL_ERROR")).body))
    ['error', 'request_id']
    """
    status = status_of(exc)
    if status == 500:
        return JSONResponse(unexpected("an unexpected error", exc=exc), status_code=500)
    if isinstance(exc, RegistryUnavailableError):
        return error_response(503, f"{exc}; inference keeps serving", headers={"Retry-After": "5"})
    return error_response(status, str(exc))


def new_request_id() -> str:
    """A short random id that ties a 500's body to its log line."""
    return secrets.token_hex(8)


def unexpected(
    what: str, detail: str = "", request_id: str | None = None, exc: BaseException | None = None
) -> dict[str, str]:
    """Log an unexpected failure under a request id (a new one unless given); the body of its 500.

    >>> sorted(unexpected("a test", "nothing broke"))
    ['error', 'request_id']
    """
    request_id = request_id or new_request_id()
    log.error("%s [request %s] %s", what, request_id, detail, exc_info=exc)
    return {
        "error": f"internal error: the service failed to answer (request {request_id}); it has been logged",
        "request_id": request_id,
    }
