"""The model registry: record runs in MLflow, query and promote versions, import them into BentoML.

>>> from mindtrace.registry import Registry, import_version   # doctest: +SKIP
>>> Registry().get_version(ref="champion").version          # doctest: +SKIP
'3'
"""

from importlib import import_module
from typing import Any

from mindtrace.registry.errors import (
    ConflictError,
    InvalidQueryError,
    NotFoundError,
    RegistryError,
    RegistryUnavailableError,
)

# The rest pulls in MLflow, torch or Lightning (seconds to import), so it loads on first use.
_LAZY = {
    "MlflowLightningCallback": "callback",
    "Registry": "query",
    "review": "gate",
    "import_version": "bento",
    "load_bento_mlp": "bento",
    "BentoImport": "bento",
    "AliasEvent": "schemas",
    "Comparison": "schemas",
    "GateDecision": "schemas",
    "ModelSummary": "schemas",
    "VersionInfo": "schemas",
    "get_or_create_experiment": "tracking",
    "tracking_uri": "tracking",
}

__all__ = [
    "ConflictError",
    "InvalidQueryError",
    "NotFoundError",
    "RegistryError",
    "RegistryUnavailableError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"mindtrace.registry.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
