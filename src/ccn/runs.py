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
        stale.unlink()
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
