"""The MNIST LightningDataModule on the real data set (cached once per session from the PyPI copy)."""

import pytest
import torch
from PIL import Image

from mindtrace.data import MNIST
from mindtrace.preprocess import preprocess

pytestmark = [pytest.mark.slow, pytest.mark.network]


@pytest.fixture
def dm(mnist_home) -> MNIST:
    dm = MNIST(num_train=50_000, num_val=10_000, progress=False)
    dm.prepare_data()
    dm.setup()
    return dm


def test_prepare_data_uses_the_verified_cache(dm):
    assert {r["source"] for r in dm.provenance.values()} == {"cache"}
    assert dm.fingerprint()["files"]["TRAIN_IMAGES"]["md5"] == "6bbc9ace898e44ae57da46a324031adb"


def test_split_sizes_and_no_overlap(dm):
    train, val = dm.split_indices["train"], dm.split_indices["val"]
    assert (len(train), len(val)) == (50_000, 10_000)
    assert len(set(train.tolist()) | set(val.tolist())) == 60_000
    assert len(dm.test_dataloader().dataset) == 10_000


def test_split_is_reproducible_under_a_seed(mnist_home):
    def split(seed):
        dm = MNIST(num_train=1000, num_val=500, seed=seed, progress=False)
        dm.setup()
        return dm.split_indices

    a, b, c = split(7), split(7), split(8)
    assert torch.equal(a["train"], b["train"]) and torch.equal(a["val"], b["val"])
    assert not torch.equal(a["train"], c["train"])


def test_subset_sizes_are_honoured(mnist_home):
    dm = MNIST(batch_size=100, num_train=1000, num_val=300, progress=False)
    dm.setup()
    assert sum(len(y) for _, y in dm.train_dataloader()) == 1000
    assert sum(len(y) for _, y in dm.val_dataloader()) == 300


def test_batches_are_normalized_tensors_and_shuffling_is_seeded(mnist_home):
    def first_batch(seed):
        dm = MNIST(batch_size=64, num_train=2000, num_val=100, seed=seed, progress=False)
        dm.setup()
        return next(iter(dm.train_dataloader()))

    x, y = first_batch(1)
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64 and y.min() >= 0 and y.max() <= 9
    assert abs(x.mean().item()) < 0.2  # standardized with the training set's mean and std
    assert torch.equal(first_batch(1)[1], y)


def test_sample_goes_through_the_same_preprocessing_as_training(dm):
    img, label = dm.sample("test", 0)
    assert isinstance(img, Image.Image) and img.size == (28, 28) and img.mode == "L"
    assert label == 7  # the first official test digit
    x, y = dm.test_dataloader().dataset[[0]]
    assert torch.equal(preprocess(img), x[0]) and int(y[0]) == label


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_train": 0},
        {"num_val": 0},
        {"num_train": 55_001, "num_val": 5_000},
        {"batch_size": 0},
    ],
)
def test_bad_sizes_are_a_clear_value_error(kwargs):
    with pytest.raises(ValueError, match="must be"):
        MNIST(**kwargs)


def test_bad_stage_and_early_loader_are_clear_errors(mnist_home):
    dm = MNIST(progress=False)
    with pytest.raises(RuntimeError, match="prepare_data"):
        dm.train_dataloader()
    with pytest.raises(ValueError, match="stage"):
        dm.sample("holdout", 0)
