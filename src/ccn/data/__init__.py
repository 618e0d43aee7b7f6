"""Data set registry: `load_dataset(config.data)` returns an `ImageDataset` for any registered name."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from ccn.data.base import ImageDataset, apply_caps
from ccn.data.builtin import load_digits_dataset, make_synthetic, resized
from ccn.config import training_crop
from ccn.data.cifar import load_cifar10, load_cifar100
from ccn.data.crops import store_size
from ccn.data.folder import load_caltech101, load_folder
from ccn.data.store import StoreOptions
from ccn.data.imagenet import DEFAULT_IMAGENET_SIZE, load_imagenet
from ccn.data.omniglot import load_omniglot
from ccn.data.tinyimagenet import load_tiny_imagenet
from ccn.data.wordnet import apply_wordnet
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


def input_size(cfg) -> Optional[int]:
    """The side of the images the model sees: data.image_size; ImageNet's 224 when unset; None: the
    data set's native size."""
    return cfg.image_size or (DEFAULT_IMAGENET_SIZE if cfg.name == "imagenet" else None)


def stored_size(cfg) -> Optional[int]:
    """The side images are decoded and stored at: the input side, or with data.crop=random_resized
    the larger square whose centred data.eval_crop is the input (ccn.data.crops)."""
    size = input_size(cfg)
    return store_size(size, cfg.eval_crop) if training_crop(cfg) == "random_resized" else size


@register_dataset("digits")
def _digits(cfg) -> ImageDataset:
    return resized(load_digits_dataset(), stored_size(cfg))


@register_dataset("synthetic")
def _synthetic(cfg) -> ImageDataset:
    # Caps decide how many images are generated; the planted structure is fixed by seed 0.
    return make_synthetic(cfg.num_classes, cfg.num_groups, stored_size(cfg),
                          train_per_class=cfg.train_per_class or 100, test_per_class=cfg.test_per_class or 50)


@register_dataset("cifar10")
def _cifar10(cfg) -> ImageDataset:
    return resized(load_cifar10(Path(cfg.root), cfg.download), stored_size(cfg))


@register_dataset("cifar100")
def _cifar100(cfg) -> ImageDataset:
    return resized(load_cifar100(Path(cfg.root), cfg.download), stored_size(cfg))


@register_dataset("folder", stored=True)
def _folder(cfg) -> ImageDataset:
    return load_folder(Path(cfg.root), stored_size(cfg), StoreOptions.from_config(cfg))


@register_dataset("caltech101", stored=True)
def _caltech101(cfg) -> ImageDataset:
    return load_caltech101(Path(cfg.root), stored_size(cfg), StoreOptions.from_config(cfg), cfg.include_background)


@register_dataset("imagenet", stored=True)
def _imagenet(cfg) -> ImageDataset:
    # the caps choose before decoding (the same images apply_caps keeps), so a capped run decodes only those
    return load_imagenet(Path(cfg.root), stored_size(cfg), StoreOptions.from_config(cfg), cfg.train_per_class,
                         cfg.test_per_class)


@register_dataset("tinyimagenet", stored=True)
def _tinyimagenet(cfg) -> ImageDataset:
    return load_tiny_imagenet(Path(cfg.root), stored_size(cfg), StoreOptions.from_config(cfg), cfg.train_per_class,
                              cfg.test_per_class)


@register_dataset("omniglot", stored=True)
def _omniglot(cfg) -> ImageDataset:
    return load_omniglot(Path(cfg.root), stored_size(cfg), StoreOptions.from_config(cfg), cfg.alphabets,
                         cfg.train_drawers, cfg.train_per_class, cfg.test_per_class)


def load_dataset(cfg) -> ImageDataset:
    """Read the data set named by `cfg.name` (a DataConfig), apply the per-class caps, check it."""
    if cfg.name not in DATASETS:
        raise ConfigError(f"data.name={cfg.name!r} is not a known data set; choose one of: {', '.join(DATASETS)}")
    if cfg.store not in ("auto", "memory") and cfg.name not in STORED:
        raise ConfigError(f"data.store={cfg.store} applies to data sets read from image files ({', '.join(sorted(STORED))}); "
                          f"{cfg.name} is read whole into memory: use data.store=auto or memory")
    ds = DATASETS[cfg.name](cfg)
    if cfg.wordnet is not None:  # coarse labels and tree paths from WordNet's hypernyms (ccn.data.wordnet)
        apply_wordnet(ds, cfg.wordnet, cfg.wordnet_groups)
    return apply_caps(ds, cfg.train_per_class, cfg.test_per_class).check()


__all__ = ["DATASETS", "ImageDataset", "input_size", "load_dataset", "make_synthetic", "register_dataset",
           "stored_size"]
