"""mindtrace: train a PyTorch Lightning model, track it in MLflow, serve it with BentoML."""

from mindtrace.config import Config

__version__ = "0.1.0"
__all__ = ["Config", "__version__"]
