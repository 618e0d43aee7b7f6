"""Run folders: what a run writes, and how a saved run is read back.

    config.yaml        the fully resolved configuration
    metrics.jsonl      one row per epoch
    results.json       final top-1/top-5 (fractions) per inference rule, group accuracies, facts
    hierarchy.json     ccn runs: class names, the groups (names), the tree, the merge tree
    model.safetensors  the weights of the whole network (backbone and head)
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Optional

import torch

from ccn import config as cfgmod
from ccn.checkpoint import STATE_FILE, atomic_write, load_weights, save_weights
from ccn.config import Config
from ccn.errors import CCNError
from ccn.hierarchy import Hierarchy
from ccn.network import build_model

RUN_FILES = ("config.yaml", "metrics.jsonl", "results.json", "hierarchy.json", "model.safetensors", STATE_FILE)


def default_run_dir(config: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.data.name}-{config.model.name.replace(':', '_')}-{config.method.name}-s{config.seed}-{stamp}"


def prepare_run_dir(path: Path, force: bool = False) -> Path:
    """Create the run folder; refuse one that already holds a run unless `force` (then clear only our files)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CCNError(f"--out {path} is a file, not a folder: choose another --out")
    existing = [name for name in RUN_FILES if (path / name).exists()]
    if existing and not force:
        raise CCNError(f"run folder {path} already holds a run ({', '.join(existing)}): choose another --out, or add "
                       "--force to replace it")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".ccn-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise CCNError(f"cannot write to run folder {path} ({err.strerror or err}): choose a writable --out") from None
    for name in existing:  # --force: replace this tool's files, leave anything else the user put there
        (path / name).unlink()
    if (path / "tensorboard").is_dir() and force:
        shutil.rmtree(path / "tensorboard")
    return path


def start_run_dir(path: Path, config: Config) -> None:
    """Write config.yaml before training starts, so an interrupted run can be resumed."""
    atomic_write(Path(path) / "config.yaml", lambda tmp: cfgmod.dump(config, tmp))


def resume_run_dir(path: Path) -> Optional[Config]:
    """The config of an interrupted run folder, or None when that run has already finished."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise CCNError(f"{path} is not a ccn run folder (no config.yaml): pass the --out folder of the interrupted run")
    if (path / "results.json").is_file():
        return None
    for stale in path.glob(".*.tmp"):  # a save that was killed half-way; the file it replaced is intact
        stale.unlink(missing_ok=True)  # under torchrun every rank cleans up: another may have been first
    return cfgmod.load(path / "config.yaml")


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2)))


def write_run(out_dir: Path, config: Config, model: torch.nn.Module, results: dict,
              hierarchy: Optional[Hierarchy]) -> None:
    out_dir = Path(out_dir)
    atomic_write(out_dir / "config.yaml", lambda tmp: cfgmod.dump(config, tmp))
    if hierarchy is not None:
        atomic_write(out_dir / "hierarchy.json", lambda tmp: hierarchy.save(tmp))
    save_weights(model, out_dir / "model.safetensors", {"format": "ccn-1", "model": config.model.name})
    write_json(out_dir / "results.json", results)


def read_results(run_dir: Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise CCNError(f"{run_dir} has no results.json: is it a finished ccn run folder?")
    return json.loads(path.read_text())


def load_run(run_dir: Path, overrides: list[str] | tuple = ()) -> tuple[Config, torch.nn.Module, Optional[Hierarchy], dict]:
    """(config, model with its weights, hierarchy or None, results) of a finished run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CCNError(f"run folder {run_dir} does not exist: pass the folder a `ccn train` wrote")
    config = cfgmod.load(run_dir / "config.yaml", overrides)
    results = read_results(run_dir)
    hierarchy = Hierarchy.load(run_dir / "hierarchy.json") if (run_dir / "hierarchy.json").exists() else None
    model = build_model(config, results["num_classes"], hierarchy)
    load_weights(model, run_dir / "model.safetensors")
    return config, model, hierarchy, results


# ---------------------------------------------------------------- starting from trained weights (model.init)


def init_weights_file(source: str) -> tuple[Path, Optional[list[str]]]:
    """(safetensors file, class names or None) of `model.init`: a run folder or a .safetensors file."""
    path = Path(source)
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise CCNError(f"model.init={source} holds no model.safetensors: pass a finished run folder or a "
                           ".safetensors file")
        results = path / "results.json"
        return weights, json.loads(results.read_text()).get("classes") if results.is_file() else None
    if not path.is_file():
        raise CCNError(f"model.init={source} does not exist: pass a run folder or a .safetensors file")
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


def _fit_problem(module: torch.nn.Module, state: dict) -> Optional[str]:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing:
        return f"it lacks {missing[:3]}"
    if unexpected:
        return f"it has tensors this backbone does not: {unexpected[:3]}"
    if wrong:
        return f"{wrong[0]} is {tuple(state[wrong[0]].shape)} there but {tuple(own[wrong[0]].shape)} here"
    return None


def load_initial_weights(model: torch.nn.Module, config: Config, classes: list[str]) -> dict:
    """Load `model.init` into `model`: the backbone always (or a one-line error naming the mismatch),
    the flat head when it has this run's classes. Returns the record results.json keeps."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, saved_classes = init_weights_file(config.model.init)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise CCNError(f"model.init: cannot read {weights} ({err}): the file is damaged or not safetensors") from None
    timm = config.model.name.startswith("timm:")
    backbone, flat, layout = split_init_state(state, set(model.backbone.state_dict()), timm)
    problem = _fit_problem(model.backbone, backbone)
    if problem:
        raise CCNError(f"model.init={weights} does not fit model.name={config.model.name} ({problem}): start "
                       "from weights of the same backbone with the same model.* options")
    model.backbone.load_state_dict(backbone)
    head = model.head.flat
    if not flat:
        why = "the file has no flat head"
    elif _fit_problem(head, flat):
        why = f"its flat head has {tuple(flat['weight'].shape)[0]} classes, this data set {len(classes)}"
    elif saved_classes is not None and list(saved_classes) != list(classes):
        why = "its classes are not this data set's classes (names or order differ)"
    else:
        head.load_state_dict(flat)
        why = None
    record = {"from": str(weights), "layout": layout, "backbone": True, "flat_head": why is None}
    if why is not None:
        record["flat_head_fresh_because"] = why
    elif saved_classes is None:
        record["note"] = "the file names no classes: its classifier is taken to follow this data set's class order"
    return record
