"""The registry's exceptions, importable without MLflow (the CLI catches them at startup).

MLflow's errors become these by their ``error_code`` (the table below); ``mindtrace.registry.mlflow_errors``
does the catching.
"""

from __future__ import annotations


class RegistryError(Exception):
    """The registry refused or failed an operation; the message says why."""


class NotFoundError(RegistryError, LookupError):
    """No such registered model, version or alias."""


class RegistryUnavailableError(RegistryError):
    """The tracking server or database cannot be reached."""


class InvalidQueryError(RegistryError, ValueError):
    """A filter, ordering, alias or name the registry cannot use."""


class ConflictError(RegistryError):
    """The registry's state does not allow the operation now: a rollback with no earlier version, a name
    that exists already."""


# MLflow's ``MlflowException.error_code`` names (mlflow/protos/databricks_pb2 ErrorCode), by the error each
# becomes; any other code is a plain RegistryError. Connection failures arrive as INTERNAL_ERROR and are told
# apart by the exception they chain (see mlflow_errors.translate), not by a code.
ERROR_CODES: dict[str, type[RegistryError]] = {
    "RESOURCE_DOES_NOT_EXIST": NotFoundError,
    "NOT_FOUND": NotFoundError,
    "INVALID_PARAMETER_VALUE": InvalidQueryError,
    "BAD_REQUEST": InvalidQueryError,
    "MALFORMED_REQUEST": InvalidQueryError,
    "RESOURCE_ALREADY_EXISTS": ConflictError,
    "RESOURCE_CONFLICT": ConflictError,
    "TEMPORARILY_UNAVAILABLE": RegistryUnavailableError,
    "SERVICE_UNDER_MAINTENANCE": RegistryUnavailableError,
    "WORKSPACE_TEMPORARILY_UNAVAILABLE": RegistryUnavailableError,
    "DEADLINE_EXCEEDED": RegistryUnavailableError,
    "REQUEST_LIMIT_EXCEEDED": RegistryUnavailableError,
    "RESOURCE_EXHAUSTED": RegistryUnavailableError,
    "IO_ERROR": RegistryUnavailableError,
    # The address answers but is no MLflow server (an HTTP 404 page): a wrong URI, not a missing model.
    "ENDPOINT_NOT_FOUND": RegistryUnavailableError,
    # A server that refuses our credentials is out of reach for this process until someone fixes them.
    "UNAUTHENTICATED": RegistryUnavailableError,
    "PERMISSION_DENIED": RegistryUnavailableError,
    "CUSTOMER_UNAUTHORIZED": RegistryUnavailableError,
}


def error_class(code: str | None) -> type[RegistryError]:
    """The registry error an MLflow error code becomes.

    >>> error_class("RESOURCE_DOES_NOT_EXIST").__name__
    'NotFoundError'
    >>> error_class("RESOURCE_ALREADY_EXISTS").__name__
    'ConflictError'
    >>> error_class("INTERNAL_ERROR").__name__
    'RegistryError'
    """
    return ERROR_CODES.get(code or "", RegistryError)
