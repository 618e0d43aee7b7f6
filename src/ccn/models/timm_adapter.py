"""Any timm model as a backbone (`model.name=timm:NAME`), built without downloading weights."""

from __future__ import annotations

import torch

from ccn.errors import ConfigError
from ccn.models.base import Backbone


class TimmBackbone(Backbone):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.num_features = model.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # num_classes=0 makes timm's own head return pooled pre-logits.
        return self.model(x)


def timm_backbone(name: str, pretrained: bool = False, **options) -> TimmBackbone:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model.name=timm:{name} needs timm: pip install 'ccn[timm]'") from None
    if options:
        raise ConfigError(f"timm:{name} takes no model.* options here ({', '.join(options)}): remove them")
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except RuntimeError as err:
        raise ConfigError(f"timm has no model {name!r} ({err}): see timm.list_models()") from None
    return TimmBackbone(model)
