"""Models: the MLP digit classifier."""

from mindtrace.models.mlp import MLP, MLPNet

__all__ = ["MLP", "MLPNet"]
