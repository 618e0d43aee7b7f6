"""Strong augmentation on uint8 batches: AutoAugment (CIFAR-10 policy), RandAugment, TrivialAugment (wide).

Every image of a batch draws its own operations, signs and magnitudes from the batch's seeded
generator; all draws happen before any image is touched, so the same seed gives the same batch
whatever the data. Operations are pure tensor functions of a uint8 (B, C, H, W) batch and a
per-image value (B,) in the operation's own unit (factor, pixels, degrees, bits, threshold). Each
one reproduces PIL's definition (ImageOps, ImageEnhance, Image.transform with NEAREST), which the
AutoAugment, RandAugment and TrivialAugment papers used; tests/test_policies.py checks them against
PIL on real images. A policy loops over the ~14 operation kinds (never over images) and applies
each kind only to the images that drew it.

Ranges and magnitude scales (where each number comes from):
- the AutoAugment CIFAR-10 sub-policies (operation, probability, magnitude 0-9): the AutoAugment
  paper's table (Cubuk et al. 2019, appendix), as torchvision also lists it;
- magnitude -> value: torchvision's documented mapping (10 bins for AutoAugment, 31 for RandAugment
  and TrivialAugment; random sign for shear, translate, rotate and the enhance factors, so magnitude
  0 is the identity). The original AutoAugment code mapped enhance magnitudes to 0.1 + 1.8 m/10
  without a sign; we follow torchvision, which most recent CIFAR results use;
- standard ranges (AutoAugment, RandAugment papers): shear 0.3, translate 150/331 of the image side,
  rotate 30 deg, enhance factor 1 +- 0.9, posterize 8..4 bits;
- wide ranges (TrivialAugment paper, torchvision's TrivialAugmentWide): shear 0.99, translate 32 px,
  rotate 135 deg, enhance factor 1 +- 0.99, posterize 8..2 bits;
- solarize threshold 256 (nothing inverted) down to 0 over the bins (ours: the papers' range is
  [0, 256]; torchvision starts at 255, which inverts white pixels at magnitude 0);
- fill of pixels moved in by geometric operations: 0, black (torchvision's default and the value of
  our crop padding; the widely used PIL re-implementations, DeepVoltaire's AutoAugment and timm's,
  fill with grey 128).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ccn.data.augment import Share, batch_size, mine

# ---------------------------------------------------------------- operations (PIL semantics)


def _coord_dtype(device: torch.device) -> torch.dtype:
    """PIL maps coordinates in double precision; mps has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def affine_nearest(images: torch.Tensor, coeffs: torch.Tensor, fill: int = 0, translation: bool = False
                   ) -> torch.Tensor:
    """PIL's Image.transform(size, AFFINE, (a, b, c, d, e, f), NEAREST) per image, coeffs (B, 6):
    output pixel (x, y) takes input pixel (floor(a x' + b y' + c), floor(d x' + e y' + f)) at the
    pixel centre (x', y') = (x + 0.5, y + 0.5); inputs outside the image give `fill`.
    Indices are computed as libImaging computes them: a pure translation (b = d = 0, a = e = 1) in
    floating point, anything else (shear, rotation) in 16.16 fixed point; a gather of those integer
    indices then moves the pixels, so no interpolation rounding can differ from PIL's."""
    b, c, h, w = images.shape
    xs = torch.arange(w, device=images.device)[None, None, :]
    ys = torch.arange(h, device=images.device)[None, :, None]
    a_, b_, c_, d_, e_, f_ = coeffs.unbind(1)
    col = lambda v: v[:, None, None]  # noqa: E731  (B,) -> (B, 1, 1)
    if translation:
        x_in = xs + col(torch.floor(c_ + 0.5).long())
        y_in = ys + col(torch.floor(f_ + 0.5).long())
    else:
        fix = lambda v: col(torch.floor(v * 65536.0 + 0.5).long())  # noqa: E731  libImaging's FIX()
        x_in = (fix(c_ + a_ * 0.5 + b_ * 0.5) + xs * fix(a_) + ys * fix(b_)) >> 16
        y_in = (fix(f_ + d_ * 0.5 + e_ * 0.5) + xs * fix(d_) + ys * fix(e_)) >> 16
    inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)  # (B, H, W)
    index = (y_in.clamp(0, h - 1) * w + x_in.clamp(0, w - 1)).reshape(b, 1, h * w)
    out = images.reshape(b, c, h * w).gather(2, index.expand(b, c, h * w)).view(b, c, h, w)
    return out.masked_fill(~inside[:, None], fill)


def _coeffs(values: torch.Tensor, build: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], list]) -> torch.Tensor:
    v = values.to(_coord_dtype(values.device))
    zero, one = torch.zeros_like(v), torch.ones_like(v)
    return torch.stack(build(v, zero, one), dim=1)


def shear_x(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL transform (1, f, 0, 0, 1, 0): rows slide sideways in proportion to y, about the top-left corner."""
    return affine_nearest(images, _coeffs(factor, lambda v, z, o: [o, v, z, z, o, z]))


def shear_y(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL transform (1, 0, 0, f, 1, 0)."""
    return affine_nearest(images, _coeffs(factor, lambda v, z, o: [o, z, z, v, o, z]))


def translate_x(images: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """PIL transform (1, 0, p, 0, 1, 0): the content moves left by p pixels (right for p < 0)."""
    return affine_nearest(images, _coeffs(pixels, lambda v, z, o: [o, z, v, z, o, z]), translation=True)


def translate_y(images: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """PIL transform (1, 0, 0, 0, 1, p): the content moves up by p pixels."""
    return affine_nearest(images, _coeffs(pixels, lambda v, z, o: [o, z, z, z, o, v]), translation=True)


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """PIL Image.rotate(degrees) (counter-clockwise about the centre (W/2, H/2), same size, NEAREST)."""
    _, _, h, w = images.shape
    cx, cy = w / 2, h / 2
    angle = -torch.deg2rad(degrees.to(_coord_dtype(degrees.device)))
    cos, sin = torch.round(torch.cos(angle), decimals=15), torch.round(torch.sin(angle), decimals=15)
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return affine_nearest(images, torch.stack([cos, sin, c, -sin, cos, f], dim=1))


def blend(degenerate: torch.Tensor, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL Image.blend(degenerate, images, factor): degenerate + factor (images - degenerate) in
    float32, clipped to [0, 255] and truncated, as libImaging does. Every ImageEnhance is one."""
    d = degenerate.to(torch.float32)
    out = d + factor.to(torch.float32).view(-1, 1, 1, 1) * (images.to(torch.float32) - d)
    return out.clamp_(0, 255).to(torch.uint8)  # the cast truncates, as PIL's (UINT8) cast does


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """PIL convert("L"): (19595 R + 38470 G + 7471 B + 2^15) >> 16, (B, 1, H, W) int32."""
    x = images.to(torch.int32)
    if x.shape[1] == 1:
        return x
    return (x[:, 0:1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:3] * 7471 + 0x8000) >> 16


def brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Brightness: blend with black."""
    return blend(torch.zeros_like(images), images, factor)


def color(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Color: blend with the image's grey version."""
    return blend(grayscale(images).expand_as(images), images, factor)


def contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Contrast: blend with a flat image at the rounded mean grey level."""
    grey = grayscale(images)
    mean = grey.flatten(1).sum(1).to(torch.float64) / grey[0].numel()
    level = torch.floor(mean + 0.5).view(-1, 1, 1, 1)  # PIL: int(mean + 0.5)
    return blend(level.expand_as(images), images, factor)


def smooth(images: torch.Tensor) -> torch.Tensor:
    """PIL ImageFilter.SMOOTH: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13, rounded half up; border
    pixels unchanged. The sums are exact integers in float32 (a 3x3 box sum from row then column
    sums, plus 4x the centre), and an integer over 13 is never within 1/26 of a rounding tie, so
    float32 rounds exactly as PIL does. (Slices, not a grouped conv2d: 1.3x faster on 256 images,
    2.3x on 24, median of 20 on the 2-core dev VM, 1 thread.)"""
    h, w = images.shape[-2:]
    x = images.to(torch.float32)
    rows = x[..., :, :-2] + x[..., :, 1:-1] + x[..., :, 2:]
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    out = x.clone()
    out[..., 1:h - 1, 1:w - 1] = torch.floor((box + 4 * x[..., 1:-1, 1:-1]) / 13 + 0.5)
    return out


def sharpness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Sharpness: blend with the SMOOTH-filtered image (factor > 1 sharpens)."""
    return blend(smooth(images), images, factor)


def posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """ImageOps.posterize: keep the `bits` highest bits of every channel."""
    mask = (255 << (8 - bits.to(torch.int32))) & 255
    return images & mask.to(torch.uint8).view(-1, 1, 1, 1)


def solarize(images: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """ImageOps.solarize: invert every value >= threshold (256: none)."""
    above = images.to(torch.float32) >= threshold.to(torch.float32).view(-1, 1, 1, 1)
    return torch.where(above, 255 - images, images)


def autocontrast(images: torch.Tensor, _values: torch.Tensor | None = None) -> torch.Tensor:
    """ImageOps.autocontrast (cutoff 0): per image and channel, stretch [lo, hi] to [0, 255] with
    int(v * 255 / (hi - lo) - lo * 255 / (hi - lo)); a flat channel stays as it is."""
    dtype = _coord_dtype(images.device)
    lo = images.amin(dim=(2, 3), keepdim=True).to(dtype)
    hi = images.amax(dim=(2, 3), keepdim=True).to(dtype)
    flat = hi <= lo
    # tensor / tensor: correctly rounded like Python's 255.0 / n (a scalar numerator takes a
    # reciprocal path in torch that differs in the last bit and moved some levels by one)
    scale = torch.full_like(hi, 255.0) / torch.where(flat, torch.ones_like(hi), hi - lo)
    offset = -lo * scale
    stretched = (images.to(dtype) * scale + offset).trunc().clamp(0, 255).to(torch.uint8)
    return torch.where(flat, images, stretched)


def equalize(images: torch.Tensor, _values: torch.Tensor | None = None) -> torch.Tensor:
    """ImageOps.equalize, per image and channel, from one bincount over (image, channel) offsets:
    step = (pixels - count of the highest value present) // 255; lut[i] = (step // 2 + number of
    pixels below i) // step, clipped to 255; step 0 (at most one value present) leaves the channel."""
    b, c, h, w = images.shape
    values = images.reshape(b * c, h * w)
    keys = values.to(torch.int32) + torch.arange(0, b * c * 256, 256, device=images.device, dtype=torch.int32)[:, None]
    hist = torch.bincount(keys.flatten(), minlength=b * c * 256).view(b * c, 256)
    top_count = hist.gather(1, values.amax(1, keepdim=True).long())
    step = (h * w - top_count) // 255  # (B*C, 1)
    below = hist.cumsum(1) - hist
    lut = torch.div(step // 2 + below, step.clamp(min=1), rounding_mode="floor").clamp(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=images.device)).to(torch.uint8)
    return lut.flatten()[keys].view(b, c, h, w)


def invert(images: torch.Tensor, _values: torch.Tensor | None = None) -> torch.Tensor:
    """ImageOps.invert."""
    return 255 - images


def identity(images: torch.Tensor, _values: torch.Tensor | None = None) -> torch.Tensor:
    return images


OPERATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "identity": identity, "shear_x": shear_x, "shear_y": shear_y, "translate_x": translate_x,
    "translate_y": translate_y, "rotate": rotate, "brightness": brightness, "color": color,
    "contrast": contrast, "sharpness": sharpness, "posterize": posterize, "solarize": solarize,
    "autocontrast": autocontrast, "equalize": equalize, "invert": invert,
}
OP_NAMES = tuple(OPERATIONS)
OP_INDEX = {name: i for i, name in enumerate(OP_NAMES)}
# RandAugment's and TrivialAugment's 14 operations (invert is AutoAugment's only)
RANDAUGMENT_OPS = tuple(n for n in OP_NAMES if n != "invert")

# ---------------------------------------------------------------- magnitudes


@dataclass(frozen=True)
class Ranges:
    """The largest value of each operation, reached at the top magnitude bin."""

    shear: float
    translate: float  # pixels, or a fraction of the image width when translate_relative
    translate_relative: bool
    rotate: float  # degrees
    enhance: float  # factor 1 +- this
    posterize_min_bits: int


STANDARD = Ranges(shear=0.3, translate=150 / 331, translate_relative=True, rotate=30.0, enhance=0.9,
                  posterize_min_bits=4)
WIDE = Ranges(shear=0.99, translate=32.0, translate_relative=False, rotate=135.0, enhance=0.99,
              posterize_min_bits=2)


def op_values(name: str, bins: torch.Tensor, negative: torch.Tensor, num_bins: int, ranges: Ranges,
              size: tuple[int, int]) -> torch.Tensor:
    """Per-image values of operation `name` for magnitude bins 0..num_bins-1 (float64; float32 on mps);
    `size` (height, width) scales relative translations: x by the width, y by the height."""
    dtype = _coord_dtype(bins.device)
    t = bins.to(dtype) / (num_bins - 1)
    sign = 1.0 - 2.0 * negative.to(dtype)
    if name in ("shear_x", "shear_y"):
        return ranges.shear * t * sign
    if name in ("translate_x", "translate_y"):
        side = size[1] if name == "translate_x" else size[0]
        return ranges.translate * (side if ranges.translate_relative else 1.0) * t * sign
    if name == "rotate":
        return ranges.rotate * t * sign
    if name in ("brightness", "color", "contrast", "sharpness"):
        return 1.0 + ranges.enhance * t * sign
    if name == "posterize":
        span = 8 - ranges.posterize_min_bits
        return 8 - torch.round(bins.to(dtype) / ((num_bins - 1) / span))
    if name == "solarize":
        return 256.0 * (1.0 - t)
    return torch.zeros_like(t)


def apply_ops(images: torch.Tensor, ops: torch.Tensor, bins: torch.Tensor, negative: torch.Tensor,
              active: torch.Tensor, num_bins: int, ranges: Ranges) -> torch.Tensor:
    """Apply to each image i the operation OP_NAMES[ops[i]] at magnitude bins[i] where active[i]:
    one pass per operation kind over the images that drew it."""
    out = images.clone()
    for k, name in enumerate(OP_NAMES):
        if name == "identity":
            continue
        idx = ((ops == k) & active).nonzero().flatten()
        if idx.numel() == 0:
            continue
        values = op_values(name, bins[idx], negative[idx], num_bins, ranges, tuple(images.shape[-2:]))
        out[idx] = OPERATIONS[name](out[idx], values)
    return out


# ---------------------------------------------------------------- policies

# The AutoAugment paper's CIFAR-10 policy: 25 sub-policies of two (operation, probability, magnitude 0-9).
# Magnitudes of operations without one (autocontrast, equalize, invert) are ignored.
AUTOAUGMENT_CIFAR10 = (
    (("invert", 0.1, 7), ("contrast", 0.2, 6)),
    (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
    (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.5, 8), ("equalize", 0.9, 2)),
    (("shear_y", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)),
    (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, 5), ("equalize", 0.5, 1)),
    (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translate_x", 0.5, 8)),
    (("equalize", 0.3, 7), ("autocontrast", 0.4, 8)),
    (("translate_y", 0.4, 3), ("sharpness", 0.2, 6)),
    (("brightness", 0.9, 6), ("color", 0.2, 8)),
    (("solarize", 0.5, 2), ("invert", 0.0, 3)),
    (("equalize", 0.2, 0), ("autocontrast", 0.6, 0)),
    (("equalize", 0.2, 8), ("equalize", 0.6, 4)),
    (("color", 0.9, 9), ("equalize", 0.6, 6)),
    (("autocontrast", 0.8, 4), ("solarize", 0.2, 8)),
    (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("autocontrast", 0.9, 3)),
    (("translate_y", 0.9, 9), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.9, 2), ("solarize", 0.8, 3)),
    (("equalize", 0.8, 8), ("invert", 0.1, 3)),
    (("translate_y", 0.7, 9), ("autocontrast", 0.9, 1)),
)


def single_threaded_on_cpu(policy_call):
    """Run a policy on CPU with one intra-op thread, then restore the thread count. Its kernels are
    small (a few thousand to a million values each, hundreds per batch), and every multi-threaded
    kernel waits at a barrier for all its threads: on the shared 2-core dev VM (load average 9-10)
    AutoAugment on 256 images took 169-1069 ms per batch with 2 threads and 52-146 ms with this,
    8 alternating calls each. Results do not depend on the thread count (no float reductions)."""
    @functools.wraps(policy_call)
    def wrapper(self, images: torch.Tensor, generator: torch.Generator, share: Optional[Share] = None) -> torch.Tensor:
        threads = torch.get_num_threads()
        if images.device.type != "cpu" or threads == 1:
            return policy_call(self, images, generator, share)
        torch.set_num_threads(1)
        try:
            return policy_call(self, images, generator, share)
        finally:
            torch.set_num_threads(threads)
    return wrapper


def _draw_sign(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) < 0.5


@dataclass(frozen=True)
class AutoAugment:
    """AutoAugment, CIFAR-10 policy: each image draws one of the 25 sub-policies and applies each of
    its two operations with the operation's probability (10 magnitude bins, standard ranges)."""

    @single_threaded_on_cpu
    def __call__(self, images: torch.Tensor, generator: torch.Generator, share: Optional[Share] = None
                 ) -> torch.Tensor:
        b, device = batch_size(images, share), images.device
        table = torch.tensor([[OP_INDEX[op] for op, _, _ in sub] for sub in AUTOAUGMENT_CIFAR10], device=device)
        probs = torch.tensor([[p for _, p, _ in sub] for sub in AUTOAUGMENT_CIFAR10], device=device)
        mags = torch.tensor([[m for _, _, m in sub] for sub in AUTOAUGMENT_CIFAR10], device=device)
        choice = mine(torch.randint(0, len(AUTOAUGMENT_CIFAR10), (b,), device=device, generator=generator), share)
        coins = mine(torch.rand(2, b, device=device, generator=generator), share)
        negative = mine(_draw_sign(2 * b, generator, device).view(2, b), share)
        for slot in range(2):
            active = coins[slot] < probs[choice, slot]
            images = apply_ops(images, table[choice, slot], mags[choice, slot], negative[slot], active, 10, STANDARD)
        return images


@dataclass(frozen=True)
class RandAugment:
    """RandAugment: each image applies `num_ops` operations drawn uniformly (with replacement) from
    the 14, all at magnitude `magnitude` of 31 bins (0-30), each with a random sign (standard ranges)."""

    num_ops: int = 2
    magnitude: int = 9

    @single_threaded_on_cpu
    def __call__(self, images: torch.Tensor, generator: torch.Generator, share: Optional[Share] = None
                 ) -> torch.Tensor:
        b, device = batch_size(images, share), images.device
        ops = torch.tensor([OP_INDEX[n] for n in RANDAUGMENT_OPS], device=device)
        picks = mine(ops[torch.randint(0, len(ops), (self.num_ops, b), device=device, generator=generator)], share)
        negative = mine(_draw_sign(self.num_ops * b, generator, device).view(self.num_ops, b), share)
        bins = torch.full((len(images),), self.magnitude, device=device)
        active = torch.ones(len(images), dtype=torch.bool, device=device)
        for slot in range(self.num_ops):
            images = apply_ops(images, picks[slot], bins, negative[slot], active, 31, STANDARD)
        return images


@dataclass(frozen=True)
class TrivialAugment:
    """TrivialAugment (wide): each image applies one of the 14 operations at a magnitude drawn
    uniformly from 31 bins, with a random sign (wide ranges)."""

    @single_threaded_on_cpu
    def __call__(self, images: torch.Tensor, generator: torch.Generator, share: Optional[Share] = None
                 ) -> torch.Tensor:
        b, device = batch_size(images, share), images.device
        ops = torch.tensor([OP_INDEX[n] for n in RANDAUGMENT_OPS], device=device)
        pick = mine(ops[torch.randint(0, len(ops), (b,), device=device, generator=generator)], share)
        bins = mine(torch.randint(0, 31, (b,), device=device, generator=generator), share)
        negative = mine(_draw_sign(b, generator, device), share)
        active = torch.ones(len(images), dtype=torch.bool, device=device)
        return apply_ops(images, pick, bins, negative, active, 31, WIDE)


POLICIES = ("none", "autoaugment", "randaugment", "trivialaugment")


def make_policy(name: str, num_ops: int = 2, magnitude: int = 9):
    """The policy called `name` (one of POLICIES), or None for "none"."""
    if name == "none":
        return None
    if name == "autoaugment":
        return AutoAugment()
    if name == "randaugment":
        return RandAugment(num_ops, magnitude)
    if name == "trivialaugment":
        return TrivialAugment()
    raise ValueError(f"unknown augmentation policy {name!r}; choose one of {', '.join(POLICIES)}")


