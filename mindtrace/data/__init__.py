"""MNIST for mindtrace: the LightningDataModule, the IDX file format, and a verified on-disk cache."""

from mindtrace.data.datamodule import MNIST
from mindtrace.data.fetch import MnistSpec, MnistUnavailableError, ensure_mnist
from mindtrace.data.idx import IdxError, read_idx, write_idx

__all__ = ["MNIST", "IdxError", "MnistSpec", "MnistUnavailableError", "ensure_mnist", "read_idx", "write_idx"]
