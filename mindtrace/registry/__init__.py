"""Tracking and registry: the MLflow Lightning callback and where runs are stored."""

from mindtrace.registry.callback import MlflowLightningCallback
from mindtrace.registry.tracking import get_or_create_experiment, tracking_uri

__all__ = ["MlflowLightningCallback", "get_or_create_experiment", "tracking_uri"]
