"""MNIST for mindtrace: the LightningDataModule, the IDX file format, and a verified on-disk cache."""

from typing import Any

from mindtrace.data.fetch import MnistSpec, MnistUnavailableError, ensure_mnist
from mindtrace.data.idx import IdxError, read_idx, write_idx

__all__ = ["MNIST", "IdxError", "MnistSpec", "MnistUnavailableError", "ensure_mnist", "read_idx", "write_idx"]


def __getattr__(name: str) -> Any:
    # MNIST pulls in Lightning (seconds to import); the CLI and the fetch code should not pay for it.
    if name == "MNIST":
        from mindtrace.data.datamodule import MNIST

        return MNIST
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
