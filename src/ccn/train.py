"""The trainer: SGD with Nesterov momentum, per-step learning-rate schedules, autocast, evaluation.

The training step does no host synchronisation: losses are summed on the device and read once
per epoch.
"""

from __future__ import annotations

import math
import os
import time

import torch
from torch import nn

from ccn.files import fault_point
from ccn.config import TrainConfig
from ccn.data.loader import TensorBatches
from ccn.dist import all_reduce_sum, autocast, is_distributed
from ccn.ema import WeightAverage
from ccn.progress import progress_bar


def lr_factor(cfg: TrainConfig, progress: float, warmup: float) -> float:
    """Multiplier of cfg.lr at `progress` in [0, 1] of the run; `warmup` is the warm-up share."""
    if progress < warmup:
        return 0.1 + 0.9 * progress / warmup  # linear warm-up from lr / 10
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** sum(progress >= m for m in cfg.milestones)
    rest = (progress - warmup) / max(1e-12, 1 - warmup)
    if cfg.schedule == "onecycle":  # ours: up over the first 30 % (or the warm-up), then linearly to 0
        peak = warmup if warmup > 0 else 0.3
        return 0.1 + 0.9 * progress / peak if progress < peak else max(0.0, (1 - progress) / (1 - peak))
    return 0.5 * (1 + math.cos(math.pi * rest))  # cosine


def parameter_groups(params: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Weight decay on weights of rank >= 2 only; norm scales and biases are left alone (ours)."""
    decay = [p for _, p in params if p.ndim >= 2]
    rest = [p for _, p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class Trainer:
    """Owns the optimizer and the step counter for one model; knows nothing of the method."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: torch.device, steps_per_epoch: int,
                 train_module: nn.Module | None = None):
        self.model, self.cfg, self.device = model, cfg, device
        self.train_module = train_module or model  # e.g. a DDP or compiled wrapper of `model`
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = max(1, cfg.epochs * steps_per_epoch)
        self.warmup = cfg.warmup_epochs / cfg.epochs
        self.step = 0
        self.optimizer = self._new_optimizer()
        self.fault = os.environ.get("CCN_FAULT")  # testing hook, see ccn.checkpoint.fault_point
        self.autocast = lambda: autocast(device, cfg.bf16)
        self.ema = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None

    def _new_optimizer(self) -> torch.optim.Optimizer:
        groups = parameter_groups(list(self.model.named_parameters()), self.cfg.weight_decay)
        return torch.optim.SGD(groups, lr=self.cfg.lr, momentum=self.cfg.momentum, nesterov=self.cfg.momentum > 0)

    def rebuild_optimizer(self) -> None:
        """Optimise exactly the model's current parameters (after a head swap), keeping the momentum
        of those it already had. The groups then depend only on the model, so a resumed run
        rebuilds the same optimizer."""
        old = self.optimizer
        self.optimizer = self._new_optimizer()
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p in old.state:
                    self.optimizer.state[p] = old.state[p]

    def _set_lr(self) -> None:
        factor = lr_factor(self.cfg, self.step / self.total_steps, self.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * factor

    def _show_progress(self) -> bool:
        """The bar is drawn by one process only (rank 0 under torchrun)."""
        return self.cfg.progress and (not is_distributed() or torch.distributed.get_rank() == 0)

    def train_epoch(self, batches: TensorBatches, epoch: int, start_batch: int = 0) -> dict:
        """One pass over `batches`; returns mean loss parts, images/s and seconds."""
        self.model.train()
        head = self.model.head
        sums: dict[str, torch.Tensor] = {}
        seen, start = 0, time.perf_counter()
        bar = progress_bar(total=len(batches), initial=start_batch, desc=f"epoch {epoch}", unit="batch",
                           enabled=self._show_progress())
        for x, y in batches.epoch(epoch, start_batch):
            self._set_lr()
            with self.autocast():
                out = self.train_module(x)
            # the loss in float32 whatever precision the forward pass ran in, for every head
            parts = head.loss({k: v.float() for k, v in out.items()}, y, self.cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            self.optimizer.step()
            self.step += 1
            if self.ema is not None:
                self.ema.update(self.model)
            if self.fault is not None:
                fault_point(f"step-{self.step}")
            for key, value in parts.items():  # summed in float32: a bf16 sum loses ~20 % over 390 steps
                sums[key] = sums.get(key, 0) + value.detach().float() * len(y)
            seen += len(y)
            bar.update(1)  # counts batches only: reading the loss here would synchronise with the device
        bar.close()
        keys = sorted(sums)
        stacked = torch.stack([sums[k] for k in keys] + [torch.tensor(float(seen), device=self.device)])
        totals = all_reduce_sum(stacked).tolist()  # the one host synchronisation of the epoch
        seconds = time.perf_counter() - start
        seen = int(totals[-1])
        means = {key: value / max(1, seen) for key, value in zip(keys, totals)}
        return {**means, "images_per_s": seen / max(seconds, 1e-9), "seconds": seconds}
