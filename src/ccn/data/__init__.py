"""Data set registry: `load_dataset(config.data)` returns an `ImageDataset` for any registered name."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ccn.data.base import ImageDataset, apply_caps
from ccn.data.builtin import load_digits_dataset, make_synthetic, resized
from ccn.data.cifar import load_cifar10, load_cifar100
from ccn.data.folder import load_caltech101, load_folder
from ccn.data.store import StoreOptions
from ccn.errors import ConfigError

DATASETS: dict[str, Callable] = {}
STORED: set[str] = set()  # data sets decoded from image files into a store (data.store applies)


def register_dataset(name: str, stored: bool = False):
    """Register a reader; `stored` ones decode image files through ccn.data.store.stored_splits."""
    def wrap(fn):
        DATASETS[name] = fn
        if stored:
            STORED.add(name)
        return fn
    return wrap


@register_dataset("digits")
def _digits(cfg) -> ImageDataset:
    return resized(load_digits_dataset(), cfg.image_size)


@register_dataset("synthetic")
def _synthetic(cfg) -> ImageDataset:
    # Caps decide how many images are generated; the planted structure is fixed by seed 0.
    return make_synthetic(cfg.num_classes, cfg.num_groups, cfg.image_size,
                          train_per_class=cfg.train_per_class or 100, test_per_class=cfg.test_per_class or 50)


@register_dataset("cifar10")
def _cifar10(cfg) -> ImageDataset:
    return resized(load_cifar10(Path(cfg.root), cfg.download), cfg.image_size)


@register_dataset("cifar100")
def _cifar100(cfg) -> ImageDataset:
    return resized(load_cifar100(Path(cfg.root), cfg.download), cfg.image_size)


@register_dataset("folder", stored=True)
def _folder(cfg) -> ImageDataset:
    return load_folder(Path(cfg.root), cfg.image_size, StoreOptions.from_config(cfg))


@register_dataset("caltech101", stored=True)
def _caltech101(cfg) -> ImageDataset:
    return load_caltech101(Path(cfg.root), cfg.image_size, StoreOptions.from_config(cfg), cfg.include_background)


def load_dataset(cfg) -> ImageDataset:
    """Read the data set named by `cfg.name` (a DataConfig), apply the per-class caps, check it."""
    if cfg.name not in DATASETS:
        raise ConfigError(f"data.name={cfg.name!r} is not a known data set; choose one of: {', '.join(DATASETS)}")
    if cfg.store not in ("auto", "memory") and cfg.name not in STORED:
        raise ConfigError(f"data.store={cfg.store} applies to data sets read from image files ({', '.join(sorted(STORED))}); "
                          f"{cfg.name} is read whole into memory: use data.store=auto or memory")
    ds = DATASETS[cfg.name](cfg)
    return apply_caps(ds, cfg.train_per_class, cfg.test_per_class).check()


__all__ = ["DATASETS", "ImageDataset", "load_dataset", "register_dataset", "make_synthetic"]
