"""Wide ResNet (Zagoruyko & Komodakis 2016): depth 6n+4, widths 16k/32k/64k, pre-activation blocks."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ccn.models.registry import Backbone, kaiming_init, register_backbone
from ccn.models.resnet_cifar import PreActBlock, conv3x3


class WideResNet(Backbone):
    def __init__(self, depth: int = 28, widen_factor: int = 10):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n+4 (16, 22, 28, 40), got {depth}")
        n = (depth - 4) // 6
        self.stem = conv3x3(3, 16)
        blocks, c_in = [], 16
        for stage, width in enumerate((16 * widen_factor, 32 * widen_factor, 64 * widen_factor)):
            for i in range(n):
                blocks.append(PreActBlock(c_in, width, 2 if stage > 0 and i == 0 else 1))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c_in)
        self.num_features = c_in
        kaiming_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.blocks(self.stem(x)))).mean(dim=(2, 3))


register_backbone("wide_resnet")(WideResNet)
register_backbone("wrn28_10")(lambda: WideResNet(28, 10))
register_backbone("wrn16_4")(lambda: WideResNet(16, 4))
