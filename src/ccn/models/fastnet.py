"""A small fast network for CPU work (ours): three conv-pool stages, widths w, 2w, 4w.

Each stage is conv -> max-pool -> BN -> ReLU -> conv -> BN -> ReLU; pooling early keeps the
convolutions cheap on 2 CPU cores. Global max pooling gives the features.

Measured on the CIFAR-10 JPEG copy (benchmarks/RESULTS.md, "Recipe search"): at lr 0.1 and batch
128 it learns poorly (its unscaled max-pooled features make the linear head unstable), and
`resnet9` at width 16, whose features are scaled by 1/8, is more accurate at the same CPU cost.
fastnet stays for the small jobs (digits) and the tests, where it is cheap and well behaved at lr
0.05, and for `norm="none"`.
"""

from __future__ import annotations

import torch
from torch import nn

from ccn.models.base import Backbone
from ccn.models.registry import register_backbone


NORMS = {"batch": nn.BatchNorm2d, "none": None}


def _norm(kind: str, channels: int) -> list[nn.Module]:
    return [NORMS[kind](channels)] if NORMS[kind] is not None else []


def _conv_bn(c_in: int, c_out: int, norm: str) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none")
    return [conv, *_norm(norm, c_out), nn.ReLU(inplace=True)]


class FastNet(Backbone):
    """`norm="none"` drops BatchNorm (for exact multi-process comparisons, where per-rank batch
    statistics would differ from single-process ones)."""

    def __init__(self, width: int = 32, norm: str = "batch"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"fastnet norm must be one of {', '.join(NORMS)}, got {norm!r}")
        layers = _conv_bn(3, width, norm)
        c_in = width
        for c_out in (width, 2 * width, 4 * width):
            conv_pool = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none"), nn.MaxPool2d(2, ceil_mode=True),
                         *_norm(norm, c_out), nn.ReLU(inplace=True)]
            layers += conv_pool + _conv_bn(c_out, c_out, norm)
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.num_features = c_in

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).amax(dim=(2, 3))


register_backbone("fastnet")(FastNet)
