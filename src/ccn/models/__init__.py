"""Backbones and the classifier that composes a backbone with a head."""

from __future__ import annotations

import torch
from torch import nn

from ccn.models import airbench, fastnet, pyramidnet, resnet9, resnet_cifar, wide_resnet  # noqa: F401  (register backbones)
from ccn.models.base import Backbone
from ccn.models.registry import BACKBONES, backbone_from_config, create_backbone, register_backbone


class Classifier(nn.Module):
    """backbone.forward_features -> (dropout) -> head. Swapping the head is one assignment."""

    def __init__(self, backbone: nn.Module, head: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor):
        return self.head(self.dropout(self.backbone.forward_features(x)))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["BACKBONES", "Backbone", "Classifier", "backbone_from_config", "count_parameters", "create_backbone",
           "register_backbone"]
