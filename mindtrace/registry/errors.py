"""The registry's exceptions, importable without MLflow (the CLI catches them at startup)."""


class RegistryError(Exception):
    """The registry refused or failed an operation; the message says why."""


class NotFoundError(RegistryError, LookupError):
    """No such registered model, version or alias."""


class RegistryUnavailableError(RegistryError):
    """The tracking server or database cannot be reached."""


class InvalidQueryError(RegistryError, ValueError):
    """A filter, ordering, alias or name the registry cannot use."""
