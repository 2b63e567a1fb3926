"""MLflow's exceptions turned into the registry's, by error code: the registry's calls to MLflow run in here.

What MLflow 3.17 raises, against the embedded SQLite store and an ``mlflow server`` alike (a server's are
``RestException``, with the code also in front of the message):

- unknown model, version or run: ``RESOURCE_DOES_NOT_EXIST``;
- unknown alias (``get_model_version_by_alias``): ``INVALID_PARAMETER_VALUE``, "alias ... not found";
- invalid or reserved alias name: ``INVALID_PARAMETER_VALUE``;
- a server that cannot be reached (refused, unknown host, no answer within MLFLOW_HTTP_REQUEST_TIMEOUT, or
  5xx/429 answers once the retries are spent): a plain ``MlflowException`` with ``INTERNAL_ERROR``, raised
  while handling a ``requests`` exception; the code alone cannot tell it from a server's own failure, so
  :func:`translate` looks at that chained exception, which is an ``OSError``;
- an address that answers with a non-MLflow 404 page: ``ENDPOINT_NOT_FOUND``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from mlflow.exceptions import MlflowException

from mindtrace.registry.errors import NotFoundError, RegistryError, RegistryUnavailableError, error_class

UNREACHABLE = "the registry cannot be reached"


def translate(
    exc: MlflowException, missing: str, codes: Mapping[str, type[RegistryError]] | None = None
) -> RegistryError:
    """The registry error for ``exc``; a :class:`NotFoundError` says ``missing`` rather than MLflow's words.

    Args:
        codes: error codes that mean something else in this one call, over :data:`errors.ERROR_CODES`.

    >>> from mlflow.exceptions import RestException
    >>> gone = RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Model Version not found"})
    >>> translate(gone, "model 'm' has no version 9")
    NotFoundError("model 'm' has no version 9")
    >>> translate(RestException({"error_code": "RESOURCE_ALREADY_EXISTS", "message": "m exists"}), "")
    ConflictError('RESOURCE_ALREADY_EXISTS: m exists')
    """
    kind = (codes or {}).get(exc.error_code) or error_class(exc.error_code)
    # requests' ConnectionError, Timeout and RetryError are OSErrors; MLflow chains them to an INTERNAL_ERROR.
    if kind is RegistryError and isinstance(exc.__cause__ or exc.__context__, OSError):
        kind = RegistryUnavailableError
    if kind is NotFoundError:
        return NotFoundError(missing)
    if kind is RegistryUnavailableError:
        return RegistryUnavailableError(f"{UNREACHABLE}: {exc}")
    return kind(str(exc))


@contextlib.contextmanager
def mlflow_errors(missing: str, codes: Mapping[str, type[RegistryError]] | None = None) -> Iterator[None]:
    """Raise the registry's exceptions in place of MLflow's (see :func:`translate`) inside the block.

    >>> from mlflow.exceptions import RestException
    >>> with mlflow_errors("model 'm' has no version 9"):
    ...     raise RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "not found"})
    Traceback (most recent call last):
    mindtrace.registry.errors.NotFoundError: model 'm' has no version 9
    """
    try:
        yield
    except MlflowException as exc:
        raise translate(exc, missing, codes) from None
    except OSError as exc:  # a database file that cannot be opened, a refused connection
        raise RegistryUnavailableError(f"{UNREACHABLE}: {exc}") from None
