"""Starting a run from trained weights (`model.init`): a finished run folder or a .safetensors file,
the backbone always, the flat head when it has this run's classes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from ccn.checkpoint import check_finite, check_weights_file, read_weights, state_difference
from ccn.config import ModelConfig
from ccn.errors import CCNError
from ccn.models.base import configure_batchnorm
from ccn.runfiles import read_results
from ccn.file_checks import file_problem


def init_weights_file(source: str) -> tuple[Path, Optional[list[str]]]:
    """(safetensors file, class names or None) of `model.init`: a run folder or a .safetensors file."""
    path = Path(source)
    if path.is_dir():
        weights = path / "model.safetensors"
        if not os.path.lexists(weights):
            raise CCNError(f"model.init={source} holds no model.safetensors: pass a finished run folder or a "
                           ".safetensors file")
        results = path / "results.json"  # checked like any results.json ccn reads back
        return weights, read_results(path)["classes"] if os.path.lexists(results) else None
    problem = file_problem(path)
    if problem:
        raise CCNError(f"model.init={source} {problem}: pass a run folder or a .safetensors file")
    if path.suffix != ".safetensors":
        raise CCNError(f"model.init={source} is not a .safetensors file: save the weights with "
                       "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')")
    return path, None


def split_init_state(state: dict, backbone_keys: set[str], timm: bool) -> tuple[dict, dict, str]:
    """(backbone state, flat-head state, layout) of a weights file.

    Our files name tensors `backbone.*` and `head.flat.*` (the other heads are not carried over). A
    bare backbone's file (e.g. `save_file(timm_model.state_dict())`) names them as the backbone does;
    a timm model sits under `model.` in our adapter. A bare file's one tensor pair that is not part
    of the backbone and looks like a classifier (weight (C, F), bias (C,)) is taken as its flat head."""
    if any(k.startswith("backbone.") for k in state):
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        flat = {k[len("head.flat."):]: v for k, v in state.items() if k.startswith("head.flat.")}
        return backbone, flat, "ccn"
    prefix = "model." if timm else ""
    backbone = {prefix + k: v for k, v in state.items() if prefix + k in backbone_keys}
    rest = {k: v for k, v in state.items() if prefix + k not in backbone_keys}
    flat = {}
    weights = [k for k, v in rest.items() if k.endswith(".weight") and v.ndim == 2]
    if len(weights) == 1 and weights[0][:-len("weight")] + "bias" in rest and len(rest) == 2:
        name = weights[0][:-len(".weight")]
        flat = {"weight": rest.pop(f"{name}.weight"), "bias": rest.pop(f"{name}.bias")}
    backbone.update({prefix + k: v for k, v in rest.items()})  # left over: reported as not fitting
    return backbone, flat, "bare backbone"


def damaged_flat_head(flat: dict) -> Optional[str]:
    """What makes a weights file's flat head unusable as any classifier (None when it is one)."""
    weight, bias = flat.get("weight"), flat.get("bias")
    if weight is None or bias is None:
        return f"its flat head has no {'weight' if weight is None else 'bias'}"
    if weight.ndim != 2 or bias.shape != weight.shape[:1]:
        return (f"its flat head weight is {tuple(weight.shape)} and bias {tuple(bias.shape)}, "
                "not (classes, features) and (classes,)")
    if not (weight.is_floating_point() and bias.is_floating_point()):
        return f"its flat head holds {str(weight.dtype).removeprefix('torch.')} values, not floating-point weights"
    return None


def fresh_head_reason(head: torch.nn.Linear, flat: dict, classes: list[str],
                      saved_classes: Optional[list[str]]) -> Optional[str]:
    """Why a well-formed flat head from a weights file is not carried over (None when it is)."""
    if not flat:
        return "the file has no flat head"
    rows, width = flat["weight"].shape
    if rows != len(classes):
        return f"its flat head has {rows} classes, this data set {len(classes)}"
    if width != head.in_features:
        return f"its flat head reads {width} features, this backbone gives {head.in_features}"
    if saved_classes is not None and list(saved_classes) != list(classes):
        return "its classes are not this data set's classes (names or order differ)"
    return None


def load_initial_weights(model: torch.nn.Module, model_cfg: ModelConfig, bn_weight: bool,
                         classes: list[str]) -> dict:
    """Load `model_cfg.init` (model.init) into `model`: the backbone always (or a one-line error naming
    the mismatch), the flat head when it has this run's classes; without `bn_weight` (train.bn_weight)
    the norm scales the backbone does not train are reset. Returns the record results.json keeps."""
    from safetensors import SafetensorError

    weights, saved_classes = init_weights_file(model_cfg.init)
    check_weights_file(weights, f"model.init={model_cfg.init}:", "pass a run folder or a .safetensors file")
    try:  # any safetensors file; a ccn weights file of a newer format is refused
        state = read_weights(weights, f"model.init={weights}")
    except (SafetensorError, OSError, ValueError) as err:
        raise CCNError(f"model.init: cannot read {weights} ({err}): the file is damaged or not safetensors") from None
    timm = model_cfg.name.startswith("timm:")
    backbone, flat, layout = split_init_state(state, set(model.backbone.state_dict()), timm)
    problem = state_difference(model.backbone, backbone)
    if problem:
        raise CCNError(f"model.init={weights} does not fit model.name={model_cfg.name} ({problem}): start "
                       "from weights of the same backbone with the same model.* options")
    damage = damaged_flat_head(flat) if flat else None
    if damage:
        raise CCNError(f"model.init={weights} is damaged ({damage}): save the weights again from the model "
                       "(safetensors.torch.save_file(model.state_dict(), ...))")
    check_finite({**backbone, **{f"head.flat.{k}": v for k, v in flat.items()}}, weights,
                 "model.init must hold finite weights (a diverged run's are not); choose another file")
    model.backbone.load_state_dict(backbone)
    scales_reset = not bn_weight and _reset_norm_scales(model.backbone)
    why = fresh_head_reason(model.head.flat, flat, classes, saved_classes)
    if why is None:
        model.head.flat.load_state_dict(flat)
    record = {"from": str(weights), "layout": layout, "backbone": True, "flat_head": why is None}
    if why is not None:
        record["flat_head_fresh_because"] = why
    elif saved_classes is None:
        record["note"] = "the file names no classes: its classifier is taken to follow this data set's class order"
    if scales_reset:
        record["bn_scales"] = "the file's BatchNorm scales were set to 1 (train.bn_weight=false)"
    return record


def _reset_norm_scales(backbone: torch.nn.Module) -> bool:
    """train.bn_weight=false means BatchNorm scales fixed at 1 with model.init too (the file's trained
    scales would otherwise stay frozen at their values); True when the file held others."""
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    differed = any(m.weight is not None and not torch.all(m.weight == 1) for m in norms)
    configure_batchnorm(backbone, train_weight=False)
    return differed
