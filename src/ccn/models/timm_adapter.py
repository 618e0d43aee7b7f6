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


# torch/torchvision pairs seen to work with timm (issue 31); torchvision is built against one torch release
WORKING_PAIRS = "torch==2.13.0 torchvision==0.28.0, or torch==2.15.0 torchvision==0.29.2"


def timm_backbone(name: str, pretrained: bool = False, **options) -> TimmBackbone:
    try:
        import timm
    except ModuleNotFoundError as err:
        if err.name == "timm":
            raise ConfigError(f"model.name=timm:{name} needs timm and a torchvision built for this torch: "
                              f"{_pair_advice()}") from None
        raise ConfigError(_import_failure(name, err)) from None
    except (ImportError, RuntimeError, OSError) as err:
        # timm imports torchvision: one built for another torch (a CUDA wheel beside a CPU torch, say) fails
        # with a RuntimeError ("operator torchvision::nms does not exist") or an OSError (a missing CUDA library)
        raise ConfigError(_import_failure(name, err)) from None
    if options:
        raise ConfigError(f"timm:{name} takes no model.* options here ({', '.join(options)}): remove them")
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except RuntimeError as err:
        raise ConfigError(f"timm has no model {name!r} ({err}): see timm.list_models()") from None
    return TimmBackbone(model)


def _import_failure(name: str, err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return (f"model.name=timm:{name} needs timm and a torchvision built for this torch ({torch.__version__}), but "
            f"importing them failed ({type(err).__name__}: {first}): install a matching pair, {_pair_advice()}")


def _pair_advice() -> str:
    first, second = WORKING_PAIRS.split(", or ")
    return (f"pip install {first} (or {second}), adding --index-url https://download.pytorch.org/whl/cpu on a "
            "machine without CUDA, then pip install 'timm>=0.9'")
