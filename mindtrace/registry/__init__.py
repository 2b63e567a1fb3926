"""The model registry: record runs in MLflow, query and promote versions, import them into BentoML.

>>> from mindtrace.registry import Registry, import_version   # doctest: +SKIP
>>> Registry().get_version(ref="champion").version          # doctest: +SKIP
'3'
"""

from mindtrace.registry.bento import BentoImport, import_version, load_bento_mlp
from mindtrace.registry.callback import MlflowLightningCallback
from mindtrace.registry.gate import PromotionPolicy, review
from mindtrace.registry.query import (
    InvalidQueryError,
    NotFoundError,
    Registry,
    RegistryError,
    RegistryUnavailableError,
)
from mindtrace.registry.schemas import AliasEvent, Comparison, GateDecision, ModelSummary, VersionInfo
from mindtrace.registry.tracking import get_or_create_experiment, tracking_uri

__all__ = [
    "AliasEvent",
    "BentoImport",
    "Comparison",
    "GateDecision",
    "InvalidQueryError",
    "MlflowLightningCallback",
    "ModelSummary",
    "NotFoundError",
    "PromotionPolicy",
    "Registry",
    "RegistryError",
    "RegistryUnavailableError",
    "VersionInfo",
    "get_or_create_experiment",
    "import_version",
    "load_bento_mlp",
    "review",
    "tracking_uri",
]
