"""Data: the Fashion-MNIST idx reader on the real files, splits, subsets, augmentation, clear errors."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.config import parse_eps
from bench.data import DEBIAN_FASHION_MNIST, DatasetNotFound, augment_batch, balanced_subset, load_data
from bench.config.names import UsageError

needs_fmnist = pytest.mark.skipif(not DEBIAN_FASHION_MNIST.exists(),
                                  reason="Debian's dataset-fashion-mnist is not installed (CI installs it)")


@needs_fmnist
def test_fashion_mnist_splits_are_disjoint_balanced_and_in_range():
    d = load_data("fashion-mnist", val_size=1000, train_subset=2000, test_subset=500)
    assert d.train.x.dtype == torch.uint8 and d.train.x.shape[1:] == (1, 28, 28)
    assert len(d.val) == 1000 and len(d.train) == 2000 and len(d.test) == 500
    assert not set(d.val.indices.tolist()) & set(d.train.indices.tolist())  # val never overlaps train
    for split, n in ((d.val, 100), (d.train, 200), (d.test, 50)):
        assert torch.bincount(split.y, minlength=10).tolist() == [n] * 10
    again = load_data("fashion-mnist", val_size=1000, train_subset=2000, test_subset=500)
    assert torch.equal(again.test.indices, d.test.indices)  # fixed seeds: the same points every run


def test_idx_reader_matches_numpy(tmp_path: Path):
    """Write idx files by hand (magic, dims, big-endian sizes) and read them back through --data-dir."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        header = lambda dims, shape: bytes([0, 0, 8, dims]) + b"".join(s.to_bytes(4, "big") for s in shape)
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(header(3, images.shape) + images.tobytes())
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(header(1, labels.shape) + labels.tobytes())
        if prefix == "train":
            train_images = images
    d = load_data("fashion-mnist", val_size=10, data_dir=str(tmp_path))
    assert len(d.train) == 30 and len(d.test) == 20
    assert torch.equal(d.train.x[:, 0], torch.from_numpy(train_images[d.train.indices.numpy()]))


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("bench.data.DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    monkeypatch.setattr("torchvision.datasets.FashionMNIST.download",
                        lambda self: (_ for _ in ()).throw(RuntimeError("offline")))
    with pytest.raises(DatasetNotFound, match="apt-get install dataset-fashion-mnist"):
        load_data("fashion-mnist", data_dir=str(tmp_path / "empty"))


def test_balanced_subset():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx = balanced_subset(labels, 10, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [4, 3, 3]
    assert torch.equal(idx, torch.sort(idx).values) and torch.equal(idx, balanced_subset(labels, 10, seed=0))


def test_synthetic_needs_no_files():
    d = load_data("synthetic", val_size=100, train_subset=200, test_subset=50)
    assert len(d.train) == 200 and d.info.num_classes == 10


def test_augment_keeps_shape_range_and_content():
    x = torch.rand(16, 3, 32, 32)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    # every output is a shifted (maybe flipped) window of its padded input: its pixels come from x or zeros
    padded_sum = x.flatten(1).sum(1)
    assert (out.flatten(1).sum(1) <= padded_sum + 1e-4).all()


def test_eps_parsing():
    assert parse_eps("8/255") == pytest.approx(8 / 255) and parse_eps("0.0314") == 0.0314
    with pytest.raises(UsageError, match="Did you mean 8/255"):
        parse_eps("8")
    with pytest.raises(UsageError, match=">= 0"):
        parse_eps("-0.1")
    assert parse_eps("1.5", threat_model="l2") == 1.5


def test_unknown_dataset_suggests():
    with pytest.raises(UsageError, match="Did you mean: fashion-mnist"):
        load_data("fashion-mnst")


@pytest.mark.parametrize("name", ["synthetic", pytest.param("fashion-mnist", marks=needs_fmnist)])
@pytest.mark.parametrize("val_size,train_subset,test_subset", [(64, None, None), (100, 300, 50), (32, 10**6, 10**6)])
def test_split_sizes_from_the_definition_match_the_loaded_data(name, val_size, train_subset, test_subset):
    """`bench run --dry-run` plans without reading files: its sizes must be the ones training will see."""
    from bench.data import DATASETS

    d = load_data(name, val_size=val_size, train_subset=train_subset, test_subset=test_subset)
    assert DATASETS[name].split_sizes(val_size, train_subset, test_subset) == (len(d.train), len(d.test))
