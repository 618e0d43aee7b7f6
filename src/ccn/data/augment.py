"""Batched augmentation on uint8 image tensors: pure tensor ops, one seeded generator, no per-image Python.

Each function takes a (B, C, H, W) tensor on any device and a `torch.Generator` on that device.
With a `Share`, the images are one process's share of a larger global batch: the random numbers
are drawn for the whole global batch (exactly what one process would draw) and only the share's
are used, so N processes that each augment their share see what one process sees, at 1/N the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass(frozen=True)
class Share:
    """Images `start`, `start + step`, ... of a global batch of `total` images (one rank's share)."""

    start: int
    step: int
    total: int

    def of(self, drawn: torch.Tensor) -> torch.Tensor:
        """The share's entries of per-image draws laid out along the last dimension."""
        return drawn[..., self.start::self.step]


def batch_size(images: torch.Tensor, share: Optional[Share]) -> int:
    """How many images the random draws are made for: the global batch when augmenting a share."""
    return len(images) if share is None else share.total


def mine(drawn: torch.Tensor, share: Optional[Share]) -> torch.Tensor:
    return drawn if share is None else share.of(drawn)


def random_flip(images: torch.Tensor, generator: torch.Generator, share: Optional[Share] = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = mine(torch.rand(batch_size(images, share), device=images.device, generator=generator), share) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator,
                share: Optional[Share] = None, reflect: bool = False) -> torch.Tensor:
    """Pad by `padding` pixels (zeros, or the image mirrored at its border with `reflect`), then cut
    an H x W window at a random offset per image."""
    if padding <= 0:
        return images
    b, _, h, w = images.shape
    n = batch_size(images, share)
    dy = mine(torch.randint(0, 2 * padding + 1, (n,), device=images.device, generator=generator), share)
    dx = mine(torch.randint(0, 2 * padding + 1, (n,), device=images.device, generator=generator), share)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    if reflect:  # read the window straight from the image: no padded copy to build
        rows, cols = _reflected(rows - padding, h), _reflected(cols - padding, w)
        source = images
    else:
        source = torch.nn.functional.pad(images, (padding,) * 4)
    return source.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # gather, back to (B, C, H, W)


def _reflected(index: torch.Tensor, size: int) -> torch.Tensor:
    """Coordinates outside 0..size-1 mirrored at the border without repeating it (-1 -> 1, size -> size-2),
    as torch's "reflect" padding does; valid for a padding below `size`."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


# A fixed odd salt keeps the first flips apart from everything else derived from the seed.
_FLIP_SALT = 0x2545F491
_MASK31 = 0x7FFFFFFF


def _mix31(x: torch.Tensor) -> torch.Tensor:
    """A 31-bit integer hash (xor-shift-multiply rounds; every product stays below 2^62 in int64)."""
    x = (((x >> 15) ^ x) * 0x2C1B3C6D) & _MASK31
    x = (((x >> 12) ^ x) * 0x297A2D39) & _MASK31
    return (x >> 15) ^ x


def first_flips(ids: torch.Tensor, seed: int) -> torch.Tensor:
    """(B,) bool: whether each image (by its index in the training set) is mirrored in the first epoch
    of an alternating flip, a function of (seed, index) alone, so ranks, resumed runs and every
    variant of a seed agree without storing anything."""
    key = int(_mix31(torch.tensor((seed ^ _FLIP_SALT) & _MASK31)))
    return ((_mix31(ids.long() ^ key) >> 7) & 1).bool()


def alternating_flip(images: torch.Tensor, ids: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """airbench's derandomised flip: image i is mirrored in epoch 1 by its first flip, then on every
    other epoch, so across any two epochs it is seen once each way (epochs count from 1)."""
    flip = first_flips(ids, seed) ^ (epoch % 2 == 0)
    return torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)


def cutout(images: torch.Tensor, size: int, generator: torch.Generator, share: Optional[Share] = None) -> torch.Tensor:
    """Zero a size x size square (clipped at the border) centred at a random pixel of each image."""
    if size <= 0:
        return images
    _, _, h, w = images.shape
    n = batch_size(images, share)
    cy = mine(torch.randint(0, h, (n,), device=images.device, generator=generator), share)[:, None, None]
    cx = mine(torch.randint(0, w, (n,), device=images.device, generator=generator), share)[:, None, None]
    ys = torch.arange(h, device=images.device)[None, :, None]
    xs = torch.arange(w, device=images.device)[None, None, :]
    half = size // 2
    inside = (ys >= cy - half) & (ys < cy - half + size) & (xs >= cx - half) & (xs < cx - half + size)
    return images.masked_fill(inside[:, None], 0)


@dataclass(frozen=True)
class Augment:
    """The training augmentation: crop after padding (or `resized_crop`, ImageNet's
    RandomResizedCrop, ccn.data.crops, in its place), optional flip, an optional strong policy
    (ccn.data.policies: AutoAugment, RandAugment, TrivialAugment), optional cutout: the order of the
    AutoAugment paper's CIFAR pipeline. Without a policy the random draws are those of crop, flip
    and cutout alone, so runs without one replay exactly as before the policies existed."""

    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0
    policy: Optional[Callable[..., torch.Tensor]] = None  # (images, generator, share) -> images
    resized_crop: Optional[Callable[..., torch.Tensor]] = None  # (images, generator, share) -> smaller images
    reflect: bool = False  # the crop's padding mirrors the image instead of zeros
    alternate_flip: bool = False  # airbench's flip on alternate epochs instead of a coin per image and epoch
    seed: int = 0  # the run seed: the alternating flip's first flips come from (seed, image index)

    def __call__(self, images: torch.Tensor, generator: torch.Generator, share: Optional[Share] = None,
                 ids: Optional[torch.Tensor] = None, epoch: int = 1) -> torch.Tensor:
        """`ids`: the images' indices in the training set, needed by the alternating flip (with `epoch`)."""
        if self.resized_crop is not None:
            images = self.resized_crop(images, generator, share)
        else:
            images = random_crop(images, self.crop_padding, generator, share, self.reflect)
        if self.flip and self.alternate_flip:
            if ids is None:
                raise ValueError("the alternating flip needs the images' indices (ids)")
            images = alternating_flip(images, ids, self.seed, epoch)
        elif self.flip:
            images = random_flip(images, generator, share)
        if self.policy is not None:
            images = self.policy(images, generator, share)
        return cutout(images, self.cutout, generator, share)


class Normalize(torch.nn.Module):
    """uint8 (B, 3, H, W) -> float, scaled to [0, 1], minus the channel mean, over the channel std."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255, persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std).view(1, -1, 1, 1) * 255), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) * self.inv_std
