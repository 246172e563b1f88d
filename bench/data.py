"""Datasets as in-memory uint8 tensors, pixels scaled to [0, 1] per batch; no normalisation outside the model.

Fashion-MNIST (the embedded default) is read straight from its idx files, found in this order: --data-dir,
$BENCH_DATA_DIR, the user cache, Debian's dataset-fashion-mnist package, then torchvision's download (online).
The validation split is carved from the training set with a fixed seed, class-balanced, so checkpoint
selection never looks at the test set.
"""
from __future__ import annotations

import contextlib
import gzip
import logging
import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.config.catalog import DATASETS as CATALOG_DATASETS, DatasetEntry
from bench.config.names import UsageError, lookup
from bench.plugins import attach, source

log = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SPLIT_SEED = 0  # the validation split and the subsets are the same for every run and every seed


class DatasetNotFound(UsageError):
    pass


@dataclass(frozen=True)
class DatasetInfo(DatasetEntry):
    """A catalogued dataset (bench/config/catalog.py: sizes, budgets, labels) with its registry name."""

    name: str = ""


DATASETS = {name: DatasetInfo(**vars(entry), name=name) for name, entry in CATALOG_DATASETS.items()}


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor  # int64 (N,)
    indices: torch.Tensor  # positions in the source split, to pair test points across runs

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class DataBundle:
    info: DatasetInfo
    train: Split
    val: Split
    test: Split


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.float().div_(255.0)


def balanced_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded, class-balanced subset of size n (classes differ by at most one)."""
    if n >= len(labels):
        return torch.arange(len(labels))
    gen = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    per_class = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    chosen = []
    for c, k in zip(classes.tolist(), per_class):
        idx = torch.nonzero(labels == c).flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    return torch.sort(torch.cat(chosen)).values


# --- raw loaders: each returns ((train_x, train_y), (test_x, test_y)) as uint8 NCHW / int64 ---------------

class CorruptDataset(UsageError):
    """A dataset file that cannot be what it claims (truncated, garbled, the wrong file): named, with what to do."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"Dataset file {path} is corrupt: {why}. Delete it and fetch it again (Fashion-MNIST: "
                         f"Debian's dataset-fashion-mnist package; either dataset: one run with network access, "
                         f"which downloads it through torchvision).")


_IDX_UINT8 = 0x08  # idx type code of unsigned bytes, the only one the (Fashion-)MNIST files use


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (LeCun's format: 0, 0, type, ndim, then ndim big-endian sizes, then the data), checked:
    a truncated or garbled file raises CorruptDataset naming it instead of a numpy or gzip traceback."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise CorruptDataset(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UINT8 or not 1 <= data[3] <= 3:
        raise CorruptDataset(path, f"no idx header of unsigned bytes (first bytes {data[:4].hex() or 'none'}, "
                                   f"expected 00 00 08 then 01-03)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise CorruptDataset(path, f"the header stops after {len(data)} bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + math.prod(shape)
    if len(data) != expected:
        raise CorruptDataset(path, f"{len(data):,} bytes where its header {'x'.join(map(str, shape))} says "
                                   f"{expected:,} ({'truncated' if len(data) < expected else 'trailing bytes'})")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx_dir(candidates: list[Path]) -> Path | None:
    for d in candidates:
        for sub in (d, d / "raw"):
            if any((sub / f"train-images-idx3-ubyte{ext}").exists() for ext in ("", ".gz")):
                return sub
    return None


def _load_idx_dir(d: Path):
    def read(stem: str, ndim: int) -> tuple[np.ndarray, Path]:
        plain = d / stem
        path = plain if plain.exists() else d / f"{stem}.gz"
        if not path.exists():
            raise CorruptDataset(path, f"missing beside {d / 'train-images-idx3-ubyte'}")
        array = _read_idx(path)
        if array.ndim != ndim:
            raise CorruptDataset(path, f"{array.ndim} dimensions where {'images' if ndim == 3 else 'labels'} "
                                       f"have {ndim}")
        return array, path

    def pair(prefix: str):
        images, images_path = read(f"{prefix}-images-idx3-ubyte", 3)
        labels, labels_path = read(f"{prefix}-labels-idx1-ubyte", 1)
        if len(images) != len(labels):
            raise CorruptDataset(labels_path, f"{len(labels):,} labels for the {len(images):,} images of "
                                              f"{images_path.name}")
        if images.shape[1:] != (28, 28):
            raise CorruptDataset(images_path, f"images of {'x'.join(map(str, images.shape[1:]))} pixels where "
                                              f"(Fashion-)MNIST has 28x28")
        if len(labels) and labels.max() > 9:
            raise CorruptDataset(labels_path, f"label {int(labels.max())} where the classes are 0-9")
        x = torch.from_numpy(images.copy()).unsqueeze(1)
        y = torch.from_numpy(labels.astype(np.int64))
        return x, y

    return pair("train"), pair("t10k")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lrat-bench"


def _roots(data_dir: str | None) -> list[Path]:
    roots = [Path(data_dir)] if data_dir else []
    if os.environ.get("BENCH_DATA_DIR"):
        roots.append(Path(os.environ["BENCH_DATA_DIR"]))
    roots.append(cache_dir())
    return roots


@contextlib.contextmanager
def _no_empty_folders_left(*folders: Path):
    """On failure, remove those of `folders` (parents first in the list) that the block created and left empty:
    torchvision makes <root>/MNIST/raw before its download fails offline, and an empty raw folder would then
    be a dataset folder that is not there. Files a partial download left are kept (torchvision checks them)."""
    created = [f for f in folders if not f.exists()]
    try:
        yield
    except BaseException:
        for f in reversed(created):
            with contextlib.suppress(OSError):  # not empty, or already gone
                f.rmdir()
        raise


def _idx_dataset(name: str, tv_folder: str, data_dir: str | None, extra: list[Path]):
    roots = _roots(data_dir)
    candidates = [p for r in roots for p in (r / name, r / tv_folder, r)] + extra
    found = _find_idx_dir(candidates)
    if found is not None:
        log.info("reading %s from %s", name, found)
        return _load_idx_dir(found)
    import torchvision

    cls = getattr(torchvision.datasets, tv_folder)
    target = roots[0]
    try:
        with _no_empty_folders_left(*target.parents[::-1], target, target / tv_folder, target / tv_folder / "raw"):
            cls(str(target), train=True, download=True)
            cls(str(target), train=False, download=True)
    except Exception as exc:  # torchvision raises URLError, RuntimeError, ... when offline
        hint = ("install Debian's package: apt-get install dataset-fashion-mnist, or "
                if name == "fashion-mnist" else "")
        raise DatasetNotFound(
            f"Dataset '{name}' not found (looked in {', '.join(str(c) for c in candidates)}) and the download "
            f"failed ({type(exc).__name__}: {exc}). To get it: {hint}put the idx files in $BENCH_DATA_DIR/{name}/, "
            f"or run once with network access (torchvision downloads it to {target}).") from exc
    return _load_idx_dir(target / tv_folder / "raw")


def _torchvision_dataset(name: str, data_dir: str | None):
    import torchvision

    root = _roots(data_dir)[0]

    def get(train: bool):
        if name == "svhn":
            ds = torchvision.datasets.SVHN(str(root), split="train" if train else "test", download=True)
            return torch.from_numpy(ds.data), torch.from_numpy(ds.labels.astype(np.int64))
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        ds = cls(str(root), train=train, download=True)
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    try:
        with _no_empty_folders_left(*root.parents[::-1], root):
            return get(True), get(False)
    except Exception as exc:
        raise DatasetNotFound(
            f"Dataset '{name}' is not in {root} and could not be downloaded ({type(exc).__name__}: {exc}). "
            f"Put torchvision's files there (or point --data-dir / $BENCH_DATA_DIR at them), or run once online."
        ) from exc


def _synthetic(n_train: int = 1536, n_test: int = 512):
    """Ten classes of noisy fixed templates: learnable in a few steps, attackable, no files needed."""
    gen = torch.Generator().manual_seed(1234)
    templates = torch.rand(10, 1, 28, 28, generator=gen)

    def make(n: int):
        y = torch.arange(n) % 10
        x = 0.6 * templates[y] + 0.4 * torch.rand(n, 1, 28, 28, generator=gen)
        return (x * 255).round().to(torch.uint8), y

    return make(n_train), make(n_test)


PLUGIN_LOADERS: dict[str, Callable[[str | None], tuple]] = {}  # plugin datasets (bench/plugins.py)


def _install_plugin(name: str, plugin) -> None:
    DATASETS[name] = DatasetInfo(**vars(plugin.entry), name=name)
    PLUGIN_LOADERS[name] = plugin.load


attach("datasets", _install_plugin)


def _checked_split(name: str, part: str, pair, info: DatasetInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """One (images, labels) pair of a plugin dataset, refused with a sentence unless uint8 (N, C, H, W) images
    of the catalogued size and integer labels in [0, classes): float images would be divided by 255 a second
    time and train at chance, a label out of range would be scored against a class the model does not have."""
    where = f"Dataset '{name}' ({source('datasets', name)}), {part} split"
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, torch.Tensor) for t in pair)):
        raise UsageError(f"{where}: the loader must return ((train_x, train_y), (test_x, test_y)) as tensors.")
    x, y = pair
    shape = (info.in_channels, info.image_size, info.image_size)
    if x.dtype != torch.uint8:
        raise UsageError(f"{where}: images are {x.dtype}; expected torch.uint8 (pixels 0-255, which the harness "
                         f"divides by 255).")
    if x.dim() != 4 or tuple(x.shape[1:]) != shape:
        raise UsageError(f"{where}: images of shape {tuple(x.shape)}; expected (N, {', '.join(map(str, shape))}).")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1 or len(y) != len(x):
        raise UsageError(f"{where}: labels must be a 1-D integer tensor with one label per image, got {y.dtype} of "
                         f"shape {tuple(y.shape)} for {len(x)} images.")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
        raise UsageError(f"{where}: labels span [{int(y.min())}, {int(y.max())}]; the dataset has "
                         f"{info.num_classes} classes, so labels must lie in [0, {info.num_classes - 1}].")
    return x, y.long()


def _load_raw(name: str, data_dir: str | None):
    if name in PLUGIN_LOADERS:
        raw = PLUGIN_LOADERS[name](data_dir)
        if not (isinstance(raw, (tuple, list)) and len(raw) == 2):
            raise UsageError(f"Dataset '{name}' ({source('datasets', name)}): the loader must return "
                             f"((train_x, train_y), (test_x, test_y)), got a {type(raw).__name__}.")
        return tuple(_checked_split(name, part, pair, DATASETS[name]) for part, pair in zip(("train", "test"), raw))
    if name == "synthetic":
        return _synthetic()
    if name == "fashion-mnist":
        return _idx_dataset(name, "FashionMNIST", data_dir, [DEBIAN_FASHION_MNIST])
    if name == "mnist":
        return _idx_dataset(name, "MNIST", data_dir, [])
    return _torchvision_dataset(name, data_dir)


def load_keyed(key: tuple, data_dir: str | None, cache: dict) -> DataBundle:
    """The bundle of `key` = (dataset, val_size, train_subset, test_subset), loaded once per `cache` (the runner,
    the presence check and `bench eval` share runs of one setting this way)."""
    if key not in cache:
        name, val_size, train_subset, test_subset = key
        cache[key] = load_data(name, val_size=val_size, train_subset=train_subset, test_subset=test_subset,
                               data_dir=data_dir)
    return cache[key]


def load_data(name: str, *, val_size: int = 1000, train_subset: int | None = None,
              test_subset: int | None = None, data_dir: str | None = None) -> DataBundle:
    info = lookup("dataset", name, DATASETS)
    (train_x, train_y), (test_x, test_y) = _load_raw(info.name, data_dir)
    all_train = torch.arange(len(train_y))
    val_idx = balanced_subset(train_y, val_size, SPLIT_SEED)
    rest = all_train[~torch.isin(all_train, val_idx)]
    if train_subset is not None:
        rest = rest[balanced_subset(train_y[rest], train_subset, SPLIT_SEED + 1)]
    if test_subset is None or test_subset >= len(test_y):
        test_idx = torch.arange(len(test_y))
    elif info.name in ("cifar10", "cifar100"):
        test_idx = torch.arange(test_subset)  # RobustBench protocol: the first N test points, in order
    else:
        test_idx = balanced_subset(test_y, test_subset, SPLIT_SEED + 2)
    return DataBundle(
        info=info,
        train=Split(train_x[rest], train_y[rest], rest),
        val=Split(train_x[val_idx], train_y[val_idx], val_idx),
        test=Split(test_x[test_idx], test_y[test_idx], test_idx),
    )


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, on whatever device x lives (no workers)."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dev = x.device
    # Drawn where x lives (no host-to-device copy per batch) unless a CPU generator is given (tests).
    rand_dev = "cpu" if generator is not None else dev
    off_y = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=rand_dev).to(dev)
    off_x = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=rand_dev).to(dev)
    rows = (off_y[:, None] + torch.arange(h, device=dev)[None, :])[:, None, :, None]
    cols = (off_x[:, None] + torch.arange(w, device=dev)[None, :])[:, None, None, :]
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    flip = (torch.rand(n, generator=generator, device=rand_dev) < 0.5).to(dev)
    return torch.where(flip[:, None, None, None], out.flip(3), out)
