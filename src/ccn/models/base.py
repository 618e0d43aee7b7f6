"""What every backbone is. A backbone maps images to pooled features (`forward_features`) and says
how wide they are (`num_features`); heads are separate modules composed on top (see ccn.heads)."""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """Base class: subclasses set `num_features` and implement `forward_features`."""

    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class PreActTrunk(Backbone):
    """stem -> blocks -> BN -> ReLU -> global average pool: the shape shared by the pre-activation
    networks (pre-activation ResNet, Wide ResNet, PyramidNet)."""

    def _assemble(self, stem: nn.Module, blocks: list[nn.Module], channels: int, he_init: bool = True) -> None:
        self.stem, self.blocks = stem, nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(channels)
        self.num_features = channels
        if he_init:
            kaiming_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.blocks(self.stem(x)))).mean(dim=(2, 3))


def kaiming_init(module: nn.Module) -> None:
    """He initialisation (fan-out) of every convolution, as the ResNet papers prescribe."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
