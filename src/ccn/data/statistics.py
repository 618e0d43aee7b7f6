"""Exact channel statistics from integer sums: each image's sums of its pixel values and of their
squares per channel add up to those of any set of images, so the mean and std of a subset (the
training images without a validation split, without unreadable files) need no second decoding."""

from __future__ import annotations

import numpy as np


def pixel_sums(images: np.ndarray) -> np.ndarray:
    """int64 (n, 6) of uint8 images (n, 3, H, W): each image's exact sum of its pixel values per channel,
    then of their squares (what the channel statistics of any subset of the images add up from)."""
    x = images.astype(np.int64)
    return np.concatenate([x.sum(axis=(2, 3)), np.square(x).sum(axis=(2, 3))], axis=1)


SUM_ROWS = 4096  # rows added in int64 at a time: 4096 images of 4096 x 4096 pixels stay below 2^63


def added(rows: np.ndarray) -> list[int]:
    """Exact column totals of pixel_sums rows, as Python integers (a big data set's can pass int64)."""
    totals = [0] * rows.shape[1]
    for start in range(0, len(rows), SUM_ROWS):
        totals = [a + int(b) for a, b in zip(totals, rows[start:start + SUM_ROWS].sum(axis=0))]
    return totals


def stats_from_sums(sums: list[int], n: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and unbiased std, in [0, 1] units, of `n` pixel values per channel whose exact
    sums and sums of squares are `sums` (the 6 totals of pixel_sums over the images)."""
    total, squares = sums[:3], sums[3:]
    mean = [t / (255 * n) for t in total]
    # unbiased variance from exact integers: (n * sum(v^2) - sum(v)^2) / (n (n - 1)), in 255^2 units
    var = [(n * q - t * t) / (n * max(n - 1, 1)) / 255 ** 2 for t, q in zip(total, squares)]
    return mean, [max(v ** 0.5, 1e-3) for v in var]
