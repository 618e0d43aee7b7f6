"""The in-memory data set every reader returns: uint8 images, int64 labels, class names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ccn.errors import DataError


@dataclass
class ImageDataset:
    """A whole data set held as tensors.

    `train_images`/`test_images` are uint8 tensors of shape (N, 3, H, W); labels are int64 in
    [0, C). `coarse` maps each class to a coarse label (CIFAR-100's 20 superclasses, or the planted
    groups of `synthetic`) when the data set has one; the oracle partition and the ARI/NMI scores use it.
    `flip` is the data set's default for random horizontal flips (off for digits, whose mirror
    images are other glyphs).
    """

    name: str
    classes: list[str]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    coarse: Optional[list[int]] = None
    coarse_names: Optional[list[str]] = None
    flip: bool = True
    notes: dict = field(default_factory=dict)

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
        if self.coarse is not None and len(self.coarse) != self.num_classes:
            raise DataError(f"{self.name}: {len(self.coarse)} coarse labels for {self.num_classes} classes")
        return self

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, in [0, 1] units."""
        x = self.train_images.float().div_(255)
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return mean.tolist(), std.tolist()


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


def split_per_class(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept indices, held-out indices): `fraction` of each class (at least one image, none from a
    one-image class) held out, chosen with `seed` -- a fixed seed, not the run's, so every variant
    and seed of a study holds out the same images and stays paired."""
    generator = torch.Generator().manual_seed(seed)
    held = []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        take = max(1, round(fraction * len(idx))) if len(idx) > 1 else 0
        held.append(idx[torch.randperm(len(idx), generator=generator)[:take]])
    held_idx = torch.cat(held).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_idx] = False
    return keep.nonzero().flatten(), held_idx


def apply_caps(ds: ImageDataset, train_cap: Optional[int], test_cap: Optional[int]) -> ImageDataset:
    """Keep at most `train_cap`/`test_cap` images per class (seeded, independent of the run seed)."""
    tr = cap_per_class(ds.train_labels, train_cap)
    te = cap_per_class(ds.test_labels, test_cap)
    ds.train_images, ds.train_labels = ds.train_images[tr], ds.train_labels[tr]
    ds.test_images, ds.test_labels = ds.test_images[te], ds.test_labels[te]
    return ds


def to_tensor_images(array: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 numpy -> (N, 3, H, W) contiguous uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


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
