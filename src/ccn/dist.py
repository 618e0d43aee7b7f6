"""Device and rank: the one place that picks a device or a process-group backend.

Library code takes `device` as an argument; only the command line calls `resolve_device`.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
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


def autocast(device: torch.device, bf16: bool):
    """The precision context of forward passes: bfloat16 autocast on CUDA when `bf16`, else none."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


# ---------------------------------------------------------------- process group helpers


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_distributed(world: World, device: torch.device) -> None:
    """Join the process group torchrun describes (nccl on GPUs, gloo on CPUs); no-op for one process."""
    if world.world_size <= 1 or is_distributed():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend=backend_for(device))


def shutdown_distributed() -> None:
    if is_distributed():
        torch.distributed.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks in place (unchanged for one process); returns it."""
    if is_distributed():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), so that evaluation and the
    class profiles are the same on every rank."""
    if is_distributed():
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)


def wrap_for_training(model: torch.nn.Module, device: torch.device, find_unused: bool) -> torch.nn.Module:
    """DistributedDataParallel around `model` when running under torchrun, else the model itself."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)
