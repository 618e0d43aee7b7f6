"""Device and rank: the one place that picks a device or a process-group backend.

Library code takes `device` as an argument; only the command line calls `resolve_device`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ccn.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """Rank information that torchrun puts in the environment (a single process without it)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(name: str = "auto", world: World = World()) -> torch.device:
    """'auto' -> the local CUDA device when there is one, else CPU; checks that the device exists."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but this machine has no CUDA device: use device=cpu or auto")
        if name == "cuda":
            name = f"cuda:{world.local_rank}"
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps but MPS is not available here: use device=cpu or auto")
    return torch.device(name)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"
