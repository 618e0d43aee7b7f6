"""A ResNet-9-style network: the layout D. Page used for fast CIFAR-10 training (DAWNBench, 2018),
written here from its description, with its widths scaled by `width` (Page's network: width 64).

    prep conv(w) -> conv(2w), pool, residual(2 convs) -> conv(4w), pool -> conv(8w), pool, residual
    -> global max pool -> times 1/8

Each conv is 3x3 -> BatchNorm -> ReLU; pooling after the activation halves the resolution, so most
of the work happens at 16x16 and below. The features are scaled by 1/8, as Page scales the logits:
without it the max-pooled, residual features are large and the linear head diverges at the
learning rates this network trains well with (0.1 and above at batch 128; measured, see
benchmarks/RESULTS.md). At width 16 it is our CPU recipe (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch
from torch import nn

from ccn.models.base import Backbone
from ccn.models.registry import register_backbone


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels), conv_bn_relu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(Backbone):
    def __init__(self, width: int = 64):
        super().__init__()
        if width < 1:
            raise ValueError(f"resnet9 width must be a positive integer, got {width}")
        w = width
        self.body = nn.Sequential(
            conv_bn_relu(3, w),
            conv_bn_relu(w, 2 * w), nn.MaxPool2d(2), Residual(2 * w),
            conv_bn_relu(2 * w, 4 * w), nn.MaxPool2d(2),
            conv_bn_relu(4 * w, 8 * w), nn.MaxPool2d(2), Residual(8 * w),
        )
        self.num_features = 8 * w
        self.feature_scale = 0.125

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).amax(dim=(2, 3)) * self.feature_scale


register_backbone("resnet9")(ResNet9)
