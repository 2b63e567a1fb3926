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
- an address that answers with a non-MLflow 404 page: ``ENDPOINT_NOT_FOUND``;
- the embedded SQLite store locked by another process past MLflow's 20 s busy timeout ("database is locked"),
  a folder that is gone ("unable to open database file"), a file that is no database, a full disk:
  SQLAlchemy's ``OperationalError`` or plain ``DatabaseError``, raised as they are. Constraint violations
  and other SQL errors are MLflow's bugs or ours, not an unavailable store, and stay plain registry errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from mlflow.exceptions import MlflowException
from sqlalchemy.exc import DatabaseError, OperationalError

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
    cause = exc.__cause__ or exc.__context__
    if _store_failed(cause):  # MLflow calls a corrupt SQLite file a BAD_REQUEST: the store decides here
        return store_unavailable(cause)
    kind = (codes or {}).get(exc.error_code) or error_class(exc.error_code)
    # requests' ConnectionError, Timeout and RetryError are OSErrors; MLflow chains them to an INTERNAL_ERROR.
    if kind is RegistryError and isinstance(cause, OSError):
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
    except OSError as exc:  # a refused connection, an artifact folder that cannot be read
        raise RegistryUnavailableError(f"{UNREACHABLE}: {exc}") from None
    except DatabaseError as exc:  # raised outside MLflow's sessions: opening the store, reading its tables
        if not _store_failed(exc):
            raise
        raise store_unavailable(exc) from None


def _store_failed(exc: BaseException | None) -> bool:
    """Whether ``exc`` is the SQL store itself failing (locked, gone, no database, full) rather than a
    statement it refused (a constraint, which MLflow reports with its own code)."""
    return isinstance(exc, OperationalError) or type(exc) is DatabaseError


def store_unavailable(exc: DatabaseError) -> RegistryUnavailableError:
    """The error for a store that failed, in the database's own words (SQLAlchemy's add a URL and SQL).

    >>> import sqlite3
    >>> store_unavailable(OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked")))
    RegistryUnavailableError('the registry cannot be reached: its database says: database is locked')
    """
    return RegistryUnavailableError(f"{UNREACHABLE}: its database says: {exc.orig}")
