"""Models: the MLP digit classifier.

``MLPNet`` (``net.py``) is the plain PyTorch network that every stored model is rebuilt into; ``MLP``
(``mlp.py``) is the LightningModule that trains it, loaded on first use so that code which only runs a
network never imports Lightning.
"""

from typing import Any

from mindtrace.models.net import MLPNet

__all__ = ["MLP", "MLPNet"]


def __getattr__(name: str) -> Any:
    if name == "MLP":
        from mindtrace.models.mlp import MLP

        return MLP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
