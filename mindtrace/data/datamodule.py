"""The MNIST LightningDataModule: a verified on-disk cache, a seeded train/val split, batches from memory."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from mindtrace.config import Config
from mindtrace.data.fetch import TRAIN_SIZE, MnistSpec, ensure_mnist, load_mnist_arrays
from mindtrace.preprocess import normalize
from mindtrace.utils import ifnone


class _TensorBatches(Dataset):
    """Indexed by a list of positions, returns a whole batch: one tensor gather, no per-item Python work."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx], self.y[idx]


class MNIST(pl.LightningDataModule):
    """MNIST digits: 60,000 official training images split into train and val, and the official 10,000 test.

    Args:
        batch_size: images per training batch (evaluation uses larger batches).
        num_workers: DataLoader workers; None means 0, since batches are slices of tensors already in memory.
        num_train, num_val: sizes of the seeded split of the 60,000 training images.
        data_dir: the cache of the four IDX files; default ``Config()["DIR_PATHS"]["DATA"]/mnist``.
        seed: seeds the split and the shuffling, so a run is reproducible.
        local_dir: a folder of IDX files to use as the ``local`` source.
        config: settings (sources, mirrors, checksums); default ``Config()``.
        progress: show progress while fetching.
        extra: more training digits, uint8 pixels ``[n, 28, 28]`` and labels ``[n]`` (the prediction log's
            feedback-labelled inputs), added to the training split; their count and digest join the
            fingerprint.

    >>> dm = MNIST(num_train=1000, num_val=200)      # doctest: +SKIP
    >>> dm.prepare_data(); dm.setup()                # doctest: +SKIP
    >>> img, label = dm.sample("test", 0)            # doctest: +SKIP
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int | None = None,
        num_train: int = 55_000,
        num_val: int = 5_000,
        data_dir: str | Path | None = None,
        seed: int = 42,
        local_dir: str | Path | None = None,
        config: Config | None = None,
        progress: bool = True,
        extra: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        if num_train < 1 or num_val < 1 or num_train + num_val > TRAIN_SIZE:
            raise ValueError(
                f"num_train and num_val must be at least 1 and add up to at most {TRAIN_SIZE}; "
                f"got num_train={num_train}, num_val={num_val}"
            )
        config = ifnone(config, Config())
        self.spec = MnistSpec.from_config(config)
        if local_dir is not None:
            # A folder named in the call is what the caller wants used: it goes first.
            others = tuple(s for s in self.spec.sources if s != "local")
            self.spec = dataclasses.replace(self.spec, local_dir=Path(local_dir), sources=("local", *others))
        self.data_dir = Path(ifnone(data_dir, config["DIR_PATHS"].getpath("DATA") / "mnist")).expanduser()
        self.batch_size = batch_size
        self.num_workers = ifnone(num_workers, 0)
        self.num_train, self.num_val, self.seed = num_train, num_val, seed
        self.progress = progress
        self.extra = extra
        self.save_hyperparameters(
            {
                "batch_size": batch_size,
                "num_train": num_train,
                "num_val": num_val,
                "seed": seed,
                "extra_digits": 0 if extra is None else len(extra[1]),
            }
        )
        self.provenance: dict[str, Any] = {}
        self._pixels: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare_data(self) -> None:
        """Fill the cache from the first source that works; a no-op when it is already verified."""
        records = ensure_mnist(self.data_dir, self.spec, self.progress)
        self.provenance = {
            key: {"file": r.path.name, "source": r.source, "md5": r.md5} for key, r in records.items()
        }

    def setup(self, stage: str | None = None) -> None:
        """Load the cache into memory and split train/val with ``seed``."""
        if self._pixels:
            return
        train_x, train_y, test_x, test_y = (
            torch.from_numpy(a) for a in load_mnist_arrays(self.data_dir, self.spec)
        )
        order = torch.randperm(TRAIN_SIZE, generator=torch.Generator().manual_seed(self.seed))
        self.split_indices = {
            "train": order[: self.num_train],
            "val": order[self.num_train :][: self.num_val],
        }
        for stage_name, idx in self.split_indices.items():
            self._pixels[stage_name] = (train_x[idx], train_y[idx].long())
        if self.extra is not None and len(self.extra[1]):
            x, y = self._pixels["train"]
            extra_x, extra_y = (torch.from_numpy(np.ascontiguousarray(a)) for a in self.extra)
            self._pixels["train"] = (torch.cat([x, extra_x]), torch.cat([y, extra_y.long()]))
        self._pixels["test"] = (test_x, test_y.long())
        # Normalized once, for the whole set: the training loop only slices.
        self._inputs = {k: (normalize(x).unsqueeze(1), y) for k, (x, y) in self._pixels.items()}

    def _loader(self, stage: str, batch_size: int, shuffle: bool) -> DataLoader:
        if not self._inputs:
            raise RuntimeError("call prepare_data() and setup() before asking for a dataloader")
        data = _TensorBatches(*self._inputs[stage])
        if shuffle:
            generator = torch.Generator().manual_seed(self.seed)
            sampler = BatchSampler(RandomSampler(data, generator=generator), batch_size, drop_last=False)
        else:
            sampler = BatchSampler(SequentialSampler(data), batch_size, drop_last=False)
        return DataLoader(data, sampler=sampler, batch_size=None, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", 1000, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", 1000, shuffle=False)

    def sample(self, stage: str, idx: int) -> tuple[Image.Image, int]:
        """One digit of ``stage`` ("train", "val" or "test") as a 28x28 greyscale image and its label."""
        if stage not in ("train", "val", "test"):
            raise ValueError(f"stage must be 'train', 'val' or 'test'; got {stage!r}")
        if not self._pixels:
            self.setup()
        x, y = self._pixels[stage]
        return Image.fromarray(x[idx].numpy()), int(y[idx])

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data a model saw: the files' checksums, split sizes and seed.

        ``sources`` says where each file came from this time ("cache" once it is cached); it is provenance,
        not identity, so compare fingerprints without it.
        """
        return {
            "files": {key: {"file": r["file"], "md5": r["md5"]} for key, r in self.provenance.items()},
            "sources": {key: r["source"] for key, r in self.provenance.items()},
            "num_train": self.num_train,
            "num_val": self.num_val,
            "num_test": 10_000,
            "seed": self.seed,
            **({} if self.extra is None else {"extra": _digest(self.extra)}),
        }


def _digest(extra: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """How many extra digits, and a sha256 of their pixels and labels: part of the data's identity."""
    pixels, labels = extra
    h = hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return {"digits": int(len(labels)), "sha256": h.hexdigest()}
