"""What every backbone is. A backbone maps images to pooled features (`forward_features`) and says
how wide they are (`num_features`); heads are separate modules composed on top (see ccn.heads)."""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """Base class: subclasses set `num_features` and implement `forward_features`."""

    num_features: int
    dirac_default = False  # model.dirac=None: whether this net's convolutions start as identities
    fits_to_data = False  # whether fit_to_data does anything (then the trainer passes it a sample)
    epochs_trained: dict = {}  # parameter name -> epochs it trains before it is frozen (others: the whole run)

    def fit_to_data(self, images: torch.Tensor) -> None:
        """Data-dependent initialisation from a sample of normalised training images, called once
        before training (airbench's whitening conv); most nets need none."""

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


def dirac_init(module: nn.Module) -> None:
    """Start every ungrouped convolution with an odd square kernel as an identity on its first
    min(c_in, c_out) filters (the rest keep their random start): airbench's "implicit residual"."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size[0] == m.kernel_size[1] \
                and m.kernel_size[0] % 2 == 1:
            with torch.no_grad():
                nn.init.dirac_(m.weight[:m.in_channels])


def configure_batchnorm(module: nn.Module, eps=None, momentum=None, train_weight: bool = True) -> None:
    """Set every BatchNorm's eps and running-statistics momentum (None: keep them) and, with
    train_weight=False, keep its scale at 1 untrained (airbench)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if eps is not None:
                m.eps = eps
            if momentum is not None:
                m.momentum = momentum
            if m.weight is not None and not train_weight:
                with torch.no_grad():
                    m.weight.fill_(1.0)
                m.weight.requires_grad_(False)
