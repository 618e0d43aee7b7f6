"""Device and rank: the one place that picks a device or a process-group backend.

Library code takes `device` as an argument; only the command line calls `resolve_device`.
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from ccn.errors import CCNError, ConfigError


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
    if name.startswith("cuda:") and world.world_size > 1:
        # every torchrun process would train on that one GPU
        raise ConfigError(f"device={name} names one GPU, but torchrun starts {world.world_size} processes: use "
                          "device=cuda (each process takes the GPU of its LOCAL_RANK) or auto")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but this machine has no CUDA device: use device=cpu or auto")
        if name == "cuda":
            name = f"cuda:{world.local_rank}"
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps but MPS is not available here: use device=cpu or auto")
    return torch.device(name)


def uses_bf16(device: torch.device, bf16: bool | None) -> bool:
    """train.bf16: None (auto) means on for CUDA, off elsewhere; true or false is honoured on CPU and CUDA."""
    if device.type not in ("cpu", "cuda"):
        return False
    return device.type == "cuda" if bf16 is None else bool(bf16)


def autocast(device: torch.device, bf16: bool | None):
    """The precision context of forward passes: bfloat16 autocast when `uses_bf16`, else none."""
    if uses_bf16(device, bf16):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA tensors plus gloo for CPU ones: NCCL alone cannot reduce a CPU tensor, and a
    CPU tensor slipping into a collective would otherwise crash the run after hours of training."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Kernel choices: deterministic algorithms when asked (with the cuBLAS workspace setting that CUDA
    needs for them, else the first matrix product raises), otherwise cuDNN's autotuner on CUDA."""
    if deterministic:
        # must be set before the first cuBLAS call; ":4096:8" is one of the two values CUDA documents
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed image sizes: autotuned convolutions pay off at once


_SEED_STRIDE = 7_919  # keeps (seed, rank, epoch) streams of nearby seeds apart


def stream_seed(seed: int, rank: int, epoch: int) -> int:
    """Seed of the training randomness (dropout, ShakeDrop) of one rank in one epoch. Different for
    each rank, so ranks do not repeat each other's masks; a function of the epoch, so a resumed run
    (each rank reseeding itself) replays exactly without any rank's RNG state in the checkpoint."""
    return ((seed * _SEED_STRIDE + rank) * 1_000_003 + epoch) % 2**63


def seed_stream(seed: int, rank: int, epoch: int, step: int = 0) -> None:
    """Restart the training randomness at the start of an epoch (step 0), or at a step checkpoint
    inside it (step = the optimizer steps done), where a resumed run restarts it the same way."""
    base = stream_seed(seed, rank, epoch)
    torch.manual_seed(base if step == 0 else (base * 65_537 + step) % 2**63)  # the CPU and every CUDA generator


# ---------------------------------------------------------------- process group helpers


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_distributed(world: World, device: torch.device) -> None:
    """Join the process group torchrun describes (nccl on GPUs, gloo on CPUs); no-op for one process."""
    if world.world_size <= 1 or is_distributed():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # an hour, not the default 10 minutes: the other ranks wait while rank 0 downloads or decodes data
    torch.distributed.init_process_group(backend=backend_for(device), timeout=datetime.timedelta(hours=1))


def barrier(device: torch.device) -> None:
    """Wait for every rank (an all-reduce of one number on the training device)."""
    if is_distributed():
        all_reduce_sum(torch.zeros(1, device=device))


@contextmanager
def main_rank_first(world: World, device: torch.device):
    """Rank 0 runs the block first (downloads, extracts, writes caches); the others then run it and
    find the files in place, so no two processes write the same file."""
    if not world.is_main:
        barrier(device)
    yield
    if world.is_main:
        barrier(device)


def shutdown_distributed() -> None:
    if is_distributed():
        torch.distributed.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks in place (unchanged for one process); returns it."""
    if is_distributed():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def check_ranks_agree(counts: dict[str, int], device: torch.device) -> None:
    """Every rank must have read the same data: a rank with other image counts (a file added to the
    folder while the ranks read it one after another, or with data.skip_bad_images and no cache, a
    file that failed for one rank only) would train on other batches, or wait for ever in a
    collective the others never reach. Compared by their largest and smallest values, so every rank
    sees the same answer and all of them stop together."""
    if not is_distributed():
        return
    mine = torch.tensor(list(counts.values()), dtype=torch.int64, device=device)
    high, low = mine.clone(), -mine
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MAX)
    if not torch.equal(high, -low):
        ranges = ", ".join(f"{name} {int(-b)}-{int(a)}" for name, a, b in zip(counts, high, low))
        raise CCNError(f"the ranks read different numbers of images ({ranges}): the data changed while they read "
                       "it; leave the data folder alone while a run starts (with data.skip_bad_images, keep "
                       "data.cache on so every rank uses rank 0's scan) and start again")


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
