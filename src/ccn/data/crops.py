"""ImageNet's crops, batched on the training device: RandomResizedCrop for training, the centre
crop for evaluation (`data.crop=random_resized`).

The stored image is a square of side S = round(image_size / eval_crop) (ours: ImageNet images are
decoded with the shorter side resized to S and the centred square kept, ccn.data.images
fit="centre_crop"; S = 256 for image_size 224). So the evaluation transform, the centred square of
side round(S * eval_crop) resized to image_size, is torchvision's Resize(256) + CenterCrop(224)
exactly, and the training crop is torchvision's RandomResizedCrop drawn on the S x S square rather
than on the whole photo (ours: the strips beyond the centred square are never seen; for a 4:3 photo
that is 1/4 of its area).

RandomResizedCrop as torchvision documents it: up to 10 tries of an area fraction uniform in
`scale` and an aspect ratio log-uniform in `ratio`, the first box that fits kept, at a uniform
offset; when none fits, the whole image, clipped to the ratio range, centred. The box is then
resampled to image_size x image_size bilinearly (grid_sample, pixel centres aligned as in PIL; no
antialiasing filter: a box is at most S / image_size = 1 / eval_crop times the output side, so
the downscale it would smooth is at most 1.14x at the default eval_crop). Every draw comes from the
batch's generator, for the whole global batch (augment.Share), as the pad-and-crop draws do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ccn.data.augment import Share, batch_size, mine

TRIES = 10  # torchvision's


def store_size(image_size: int, eval_crop: float) -> int:
    """The side S of the stored square whose centred `eval_crop` fraction is `image_size` pixels."""
    return round(image_size / eval_crop)


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
               generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n, 4) boxes (top, left, height, width) in pixels, drawn as torchvision's RandomResizedCrop
    draws them, batched: all tries are drawn at once and the first that fits is kept."""
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, TRIES, device=device, generator=generator))
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * torch.rand(n, TRIES, device=device, generator=generator))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.float().argmax(dim=1, keepdim=True)  # the first try that fits (0 when none does)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    fallback_h, fallback_w = _fallback(height, width, ratio)
    found = fits.any(dim=1)
    h = torch.where(found, h, torch.full_like(h, fallback_h))
    w = torch.where(found, w, torch.full_like(w, fallback_w))
    u_top = torch.rand(n, device=device, generator=generator)
    u_left = torch.rand(n, device=device, generator=generator)
    top = torch.where(found, torch.floor(u_top * (height - h + 1)), torch.round((height - h) / 2))
    left = torch.where(found, torch.floor(u_left * (width - w + 1)), torch.round((width - w) / 2))
    return torch.stack([top, left, h, w], dim=1)


def _fallback(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's box when no try fits: the whole image, clipped to the ratio range."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return round(width / min(ratio)), width
    if in_ratio > max(ratio):
        return height, round(height * max(ratio))
    return height, width


def resample_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's box (top, left, height, width) resized to size x size, bilinear, uint8 in and out.

    Output pixel o of a box of width w starting at x0 samples source coordinate
    x0 + (o + 0.5) w / size - 0.5 (pixel centres, as PIL and torchvision place them); samples past
    the edge take the edge pixel."""
    _, _, height, width = images.shape
    steps = (torch.arange(size, device=images.device, dtype=torch.float32) + 0.5) / size  # (size,)
    top, left, h, w = (boxes[:, k:k + 1].float() for k in range(4))
    x = (2 * (left + steps * w)) / width - 1  # (B, size): grid_sample's coordinates, align_corners=False
    y = (2 * (top + steps * h)) / height - 1
    grid = torch.stack(torch.broadcast_tensors(x[:, None, :], y[:, :, None]), dim=-1)  # (B, size, size, 2)
    out = torch.nn.functional.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                                          align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class RandomResizedCrop:
    """Training crop: a random box per image (crop_boxes), resampled to `size` x `size`."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __call__(self, images: torch.Tensor, generator: torch.Generator,
                 share: Optional[Share] = None) -> torch.Tensor:
        _, _, height, width = images.shape
        boxes = crop_boxes(batch_size(images, share), height, width, self.scale, self.ratio, generator,
                           images.device)
        return resample_boxes(images, mine(boxes.T, share).T, self.size)


@dataclass(frozen=True)
class CentreCrop:
    """Evaluation crop: the centred square of side round(S * fraction), resized to `size` x `size`
    (bilinear with antialiasing, as torchvision's Resize on tensors) when it is not that already."""

    size: int
    fraction: float = 0.875

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _, _, height, width = images.shape
        side_h, side_w = round(height * self.fraction), round(width * self.fraction)
        top, left = int(round((height - side_h) / 2)), int(round((width - side_w) / 2))  # torchvision's offsets
        images = images[:, :, top:top + side_h, left:left + side_w]
        if (side_h, side_w) == (self.size, self.size):
            return images.contiguous()
        x = torch.nn.functional.interpolate(images.float(), size=(self.size, self.size), mode="bilinear",
                                            antialias=True, align_corners=False)
        return x.round_().clamp_(0, 255).to(torch.uint8)
