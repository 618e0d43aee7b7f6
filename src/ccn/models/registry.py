"""Backbone registry: backbones by name (`model.name`), and `timm:NAME` through the timm adapter."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ccn.errors import ConfigError

BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str):
    def wrap(fn):
        BACKBONES[name] = fn
        return fn
    return wrap


def _option_kwargs(model_cfg) -> dict:
    """The ModelConfig fields a backbone factory may take, without the ones left at None."""
    names = ("width", "depth", "alpha", "widen_factor", "shakedrop", "norm", "whiten_bias_epochs")
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


def min_input_side(name: str) -> tuple[int, str]:
    """(the least image side backbone `name` can take, why): a backbone that pools its input away
    below some side says so in `min_input_side` and `min_input_reason` (1 and "" otherwise)."""
    factory = BACKBONES.get(name)
    return getattr(factory, "min_input_side", 1), getattr(factory, "min_input_reason", "")


def backbone_from_config(model_cfg) -> nn.Module:
    """The backbone `model.*` names, with identity-initialised convolutions when model.dirac (or the net) says so."""
    backbone = create_backbone(model_cfg.name, **_option_kwargs(model_cfg))
    dirac = model_cfg.dirac if getattr(model_cfg, "dirac", None) is not None else getattr(backbone, "dirac_default", False)
    if dirac:
        from ccn.models.base import dirac_init
        dirac_init(backbone)
    return backbone
