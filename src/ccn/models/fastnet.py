"""A small fast network for CPU work (ours): three conv-pool stages, widths w, 2w, 4w.

Each stage is conv -> max-pool -> BN -> ReLU -> conv -> BN -> ReLU; pooling early keeps the
convolutions cheap on 2 CPU cores. Global max pooling gives the features.
"""

from __future__ import annotations

import torch
from torch import nn

from ccn.models.registry import Backbone, register_backbone


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class FastNet(Backbone):
    def __init__(self, width: int = 32):
        super().__init__()
        layers = _conv_bn(3, width)
        c_in = width
        for c_out in (width, 2 * width, 4 * width):
            conv_pool = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2, ceil_mode=True),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            layers += conv_pool + _conv_bn(c_out, c_out)
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.num_features = c_in

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).amax(dim=(2, 3))


register_backbone("fastnet")(FastNet)
