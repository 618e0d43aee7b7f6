"""The data set every reader returns: uint8 images (a tensor, or an ImageSource of a store), int64 labels, class names."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ccn.data.statistics import added, pixel_sums, stats_from_sums
from ccn.data.store import ImageSource, select
from ccn.errors import DataError

STATS_CHUNK_BYTES = 32 * 2**20  # int64 working memory per chunk when statistics are summed over a store


@dataclass
class ImageDataset:
    """A whole data set.

    `train_images`/`test_images` are uint8 images of shape (N, 3, H, W): tensors for the data sets
    generated or read whole (digits, synthetic, CIFAR), an ImageSource of a store for image files
    (ccn.data.store.ImageRows: in memory or mapped from disk; ccn.data.stream.StreamSource: decoded
    per batch); labels are int64 in [0, C). `coarse` maps each class to a coarse label (CIFAR-100's 20 superclasses, the planted
    groups of `synthetic`, or the WordNet cut of data.wordnet) when the data set has one; the oracle partition and the ARI/NMI
    scores use it. `tree_paths`, where a class tree is known (data.wordnet), holds each class's node ids from the root down to
    its own id, for distances in the tree.
    `flip` is the data set's default for random horizontal flips (off for digits, whose mirror
    images are other glyphs).
    """

    name: str
    classes: list[str]
    train_images: torch.Tensor | ImageSource
    train_labels: torch.Tensor
    test_images: torch.Tensor | ImageSource
    test_labels: torch.Tensor
    coarse: Optional[list[int]] = None
    coarse_names: Optional[list[str]] = None
    flip: bool = True
    notes: dict = field(default_factory=dict)
    class_ids: Optional[list[str]] = None  # stable unique ids beside the names people read (ImageNet's wnids)
    fit: str = "stretch"  # how each image file became a square (ccn.data.images.decode_image); predict does the same
    # each class's node ids from the root of a class tree down to the class's own id (data.wordnet fills it)
    tree_paths: Optional[list[list[str]]] = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    def check(self) -> "ImageDataset":
        """Raise a DataError for anything a run could not use; return self."""
        if self.num_classes < 2:
            raise DataError(f"data set {self.name!r} has {self.num_classes} class(es): a classifier needs at least 2")
        for split, images, labels in [("train", self.train_images, self.train_labels),
                                      ("test", self.test_images, self.test_labels)]:
            if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
                raise DataError(f"{self.name} {split} images must be uint8 (N, 3, H, W), got {tuple(images.shape)} {images.dtype}")
            if len(images) != len(labels):
                raise DataError(f"{self.name} {split}: {len(images)} images but {len(labels)} labels")
            if len(labels) == 0:
                raise DataError(f"{self.name} {split} split is empty: check the data folder")
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= self.num_classes:
                raise DataError(
                    f"{self.name} {split} labels range over [{low}, {high}] but there are {self.num_classes} "
                    f"classes: labels must lie in [0, {self.num_classes - 1}]"
                )
        if self.class_ids is not None and (len(self.class_ids) != self.num_classes
                                           or len(set(self.class_ids)) != self.num_classes):
            raise DataError(f"{self.name}: {len(self.class_ids)} class ids for {self.num_classes} classes, or repeated")
        if len(set(self.classes)) != self.num_classes:
            raise DataError(f"{self.name}: class names repeat ({self.num_classes} classes): give each class its own name")
        if self.coarse is not None and len(self.coarse) != self.num_classes:
            raise DataError(f"{self.name}: {len(self.coarse)} coarse labels for {self.num_classes} classes")
        if self.tree_paths is not None and len(self.tree_paths) != self.num_classes:
            raise DataError(f"{self.name}: {len(self.tree_paths)} tree paths for {self.num_classes} classes")
        return self

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of all training images, in [0, 1] units."""
        return channel_stats(self.train_images)


def require_data_root(root: Path, fix: str) -> None:
    """DataError unless data.root is an existing folder: one line saying whether it is a file or missing,
    and `fix` (the loader's layout help)."""
    if root.exists() and not root.is_dir():
        raise DataError(f"data.root {root} is a file, not a folder: {fix}")
    if not root.is_dir():
        raise DataError(f"data.root {root} does not exist: {fix}")


def channel_stats(images: torch.Tensor | ImageSource) -> tuple[list[float], list[float]]:
    """Per-channel mean and (unbiased) std of `images`, in [0, 1] units.

    Tensors (digits, synthetic, CIFAR): one float32 pass over them all, the computation every
    earlier run used, so their normalisation (and results) stay bit-identical. A store (folder,
    Caltech-101, ImageNet): exact integer sums of the pixel values and their squares, chunk by chunk
    (about STATS_CHUNK_BYTES of int64 at a time), so memory does not grow with the data set and the
    result does not depend on the store, the chunking or the number of threads."""
    if isinstance(images, torch.Tensor):
        x = images.float().div_(255)
        return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    kept = getattr(images, "channel_stats", None)  # a stream keeps them in the cache (ccn.data.stream)
    return kept(summed_channel_stats) if kept is not None else summed_channel_stats(images)


def summed_channel_stats(images) -> tuple[list[float], list[float]]:
    """channel_stats of an ImageSource with `chunks(rows)`: exact integer sums, chunk by chunk."""
    sums = [0] * 6
    per_image = 8 * int(np.prod(images.shape[1:]))
    for chunk in images.chunks(max(1, STATS_CHUNK_BYTES // per_image)):
        sums = [a + b for a, b in zip(sums, added(pixel_sums(chunk.numpy())))]
    return stats_from_sums(sums, len(images) * images.shape[2] * images.shape[3])


def cap_per_class(labels: torch.Tensor, cap: Optional[int], seed: int = 0) -> torch.Tensor:
    """Indices keeping at most `cap` items of each class, chosen with a fixed seed, in original order."""
    if cap is None:
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        chosen = idx[torch.randperm(len(idx), generator=generator)[:cap]]
        keep.append(chosen)
    return torch.cat(keep).sort().values


def held_out_count(class_size: int, fraction: float) -> int:
    """Images split_per_class holds out of a class of `class_size`: `fraction` of them, at least one,
    never the last one (the run plan counts the training images with it, before any is drawn)."""
    return min(max(1, round(fraction * class_size)), class_size - 1)


def split_per_class(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept indices, held-out indices): `fraction` of each class held out (at least one image, and
    never the last one: a one-image class gives none, and every class keeps at least one), chosen
    with `seed` -- a fixed seed, not the run's, so every variant and seed of a study holds out the
    same images and stays paired. Where the last-one rule does not bind, the images held out are the
    ones earlier versions chose (the same draws, in the same order)."""
    generator = torch.Generator().manual_seed(seed)
    held = []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        take = held_out_count(len(idx), fraction)
        held.append(idx[torch.randperm(len(idx), generator=generator)[:take]])
    held_idx = torch.cat(held).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_idx] = False
    return keep.nonzero().flatten(), held_idx


def apply_caps(ds: ImageDataset, train_cap: Optional[int], test_cap: Optional[int]) -> ImageDataset:
    """Keep at most `train_cap`/`test_cap` images per class (seeded, independent of the run seed)."""
    tr = cap_per_class(ds.train_labels, train_cap)
    te = cap_per_class(ds.test_labels, test_cap)
    ds.train_images, ds.train_labels = select(ds.train_images, tr), ds.train_labels[tr]
    ds.test_images, ds.test_labels = select(ds.test_images, te), ds.test_labels[te]
    return ds


def resize_batch(images: torch.Tensor, size: Optional[int]) -> torch.Tensor:
    """Resize uint8 (N, 3, H, W) images to size x size with antialiased bilinear filtering."""
    if size is None or images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = []
    for chunk in images.split(4096):
        x = torch.nn.functional.interpolate(chunk.float(), size=(size, size), mode="bilinear",
                                            antialias=True, align_corners=False)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)
