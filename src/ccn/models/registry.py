"""Backbone registry. A backbone maps images to pooled features (`forward_features`) and says how
wide they are (`num_features`); heads are separate modules composed on top (see ccn.heads)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ccn.errors import ConfigError

BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str):
    def wrap(fn):
        BACKBONES[name] = fn
        return fn
    return wrap


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


def _option_kwargs(model_cfg) -> dict:
    """The ModelConfig fields a backbone factory may take, without the ones left at None."""
    names = ("width", "depth", "alpha", "widen_factor", "shakedrop", "norm")
    return {n: getattr(model_cfg, n) for n in names if getattr(model_cfg, n, None) is not None}


def create_backbone(name: str, **options) -> nn.Module:
    """Build a backbone by registry name or `timm:NAME`; unknown options are a ConfigError."""
    if name.startswith("timm:"):
        from ccn.models.timm_adapter import timm_backbone
        return timm_backbone(name[len("timm:"):], **options)
    if name not in BACKBONES:
        raise ConfigError(f"model.name={name!r} is not a known backbone; choose one of: "
                          f"{', '.join(sorted(BACKBONES))}, or timm:NAME when timm is installed")
    try:
        return BACKBONES[name](**options)
    except TypeError as err:
        raise ConfigError(f"model.name={name} does not take these options ({err}): remove them from model.*") from None
    except ValueError as err:
        raise ConfigError(f"model.name={name}: {err}") from None


def backbone_from_config(model_cfg) -> nn.Module:
    return create_backbone(model_cfg.name, **_option_kwargs(model_cfg))
