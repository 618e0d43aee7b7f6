"""Weights on disk: safetensors files written atomically (temporary file, fsync, rename)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ccn.errors import CCNError


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), fsync it, then rename over `path`: a crash leaves the old file intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CCNError(f"could not write {path} ({err.strerror or err}): free disk space or choose another --out; "
                       "the previous file, if any, is unchanged") from None
    finally:
        tmp.unlink(missing_ok=True)


def save_weights(model: torch.nn.Module, path: Path, metadata: dict | None = None) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()}))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a safetensors file into `model`, refusing files made for another model or class count."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CCNError(f"cannot read weights {path} ({err}): the file is missing or damaged") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}")
        raise CCNError(f"{path} does not fit this model ({detail}): it was saved from another backbone, head or "
                       "class count; use the run folder it came from")
    model.load_state_dict(state)
