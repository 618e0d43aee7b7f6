"""Data sets that need no files: scikit-learn's digits and synthetic classes with planted groups."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ccn.data.base import ImageDataset, resize_batch

DIGITS_TEST_FRACTION = 0.25  # the split is fixed (seed 0) so every run and seed sees the same test set


def load_digits_dataset() -> ImageDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images), as 3-channel uint8."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # pixel values are 0..16
    images = np.repeat(images[:, None], 3, axis=1)
    x_tr, x_te, y_tr, y_te = train_test_split(images, bunch.target, test_size=DIGITS_TEST_FRACTION,
                                              stratify=bunch.target, random_state=0)
    return ImageDataset(
        name="digits", classes=[str(d) for d in range(10)],
        train_images=torch.from_numpy(np.ascontiguousarray(x_tr)), train_labels=torch.as_tensor(y_tr, dtype=torch.long),
        test_images=torch.from_numpy(np.ascontiguousarray(x_te)), test_labels=torch.as_tensor(y_te, dtype=torch.long),
        flip=False,  # a mirrored digit is another glyph
    )


def _smooth_patterns(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """`count` random smooth RGB patterns in [-1, 1]: 4x4 noise upsampled to size x size."""
    coarse = torch.rand(count, 3, 4, 4, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def make_synthetic(num_classes: int = 20, num_groups: int = 4, size: Optional[int] = None,
                   train_per_class: int = 100, test_per_class: int = 50, seed: int = 0) -> ImageDataset:
    """Classes in known groups: every image is its group's pattern (strong), its class's pattern
    (weaker) and noise, so a briefly trained network confuses classes within a group first.
    The planted groups are `coarse` (class c belongs to group c % num_groups)."""
    size = size or 16
    generator = torch.Generator().manual_seed(seed)
    group_of = torch.arange(num_classes) % num_groups
    group_patterns = _smooth_patterns(num_groups, size, generator)
    class_patterns = _smooth_patterns(num_classes, size, generator)
    prototypes = 0.75 * group_patterns[group_of] + 0.15 * class_patterns

    def sample(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        gain = 0.8 + 0.4 * torch.rand(len(labels), 1, 1, 1, generator=generator)
        noise = 0.5 * torch.randn(len(labels), 3, size, size, generator=generator)
        pixels = 128 + 127 * (gain * prototypes[labels] + noise).clamp(-1, 1)
        return pixels.round().to(torch.uint8), labels

    x_tr, y_tr = sample(train_per_class)
    x_te, y_te = sample(test_per_class)
    return ImageDataset(
        name="synthetic", classes=[f"g{int(group_of[c])}_c{c}" for c in range(num_classes)],
        train_images=x_tr, train_labels=y_tr, test_images=x_te, test_labels=y_te,
        coarse=group_of.tolist(), coarse_names=[f"g{k}" for k in range(num_groups)], flip=False,
    )


def resized(ds: ImageDataset, size: Optional[int]) -> ImageDataset:
    ds.train_images = resize_batch(ds.train_images, size)
    ds.test_images = resize_batch(ds.test_images, size)
    return ds
