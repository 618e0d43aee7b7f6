"""The trainer: SGD with Nesterov momentum, per-step learning-rate schedules, autocast, evaluation.

The training step does no host synchronisation: losses are summed on the device and read once
per epoch.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

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


def parameter_groups(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int) -> list[dict]:
    """The optimizer's groups, built from the model alone (so a resumed run rebuilds them exactly):
    weight decay on trained weights of rank >= 2 only, norm scales and biases left alone (ours);
    with train.bn_bias_lr != 1 the BatchNorm biases in a group of their own at that multiple of the
    learning rate (airbench: 64); parameters a backbone trains only for its first epochs
    (`Backbone.epochs_trained`, airbench's whitening bias) in a group that stops at that step.
    Each group's `lr_scale` and `stop_step` are read by the trainer's schedule."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    limited = {f"backbone.{name}": epochs * steps_per_epoch
               for name, epochs in getattr(getattr(model, "backbone", None), "epochs_trained", {}).items()}
    norm_biases = {id(m.bias) for m in model.modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None}
    special_norm = cfg.bn_bias_lr != 1.0
    groups = [{"params": [p for n, p in named if p.ndim >= 2 and n not in limited], "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in named if p.ndim < 2 and n not in limited
                          and not (special_norm and id(p) in norm_biases)], "weight_decay": 0.0}]
    if special_norm:
        groups.append({"params": [p for n, p in named if id(p) in norm_biases and n not in limited],
                       "weight_decay": 0.0, "lr_scale": cfg.bn_bias_lr})
    for name, stop in limited.items():
        param = dict(named).get(name)
        if param is not None:
            groups.append({"params": [param], "weight_decay": cfg.weight_decay if param.ndim >= 2 else 0.0,
                           "stop_step": stop})
    return groups


def lookahead_decay(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """airbench's lookahead decay at `step`: base^every, warmed up by progress^3 (move fast early,
    average strongly at the end)."""
    return cfg.lookahead_decay ** cfg.lookahead_every * (step / total_steps) ** 3


@dataclass
class EpochProgress:
    """How far one epoch has gone: what a step checkpoint saves so that the resumed epoch ends with
    the same weights and writes the same metrics row as one that never stopped."""

    batch: int = 0  # batches of the epoch trained
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # loss parts summed over images, float32
    seen: int = 0  # images trained (by this process)
    seconds: float = 0.0  # training time of the epoch in earlier processes

    def gather_to_main(self, rank: int, device: torch.device) -> None:
        """Under torchrun: put every rank's sums on rank 0 (the one that saves) and zero the others',
        so the epoch's totals are unchanged and the checkpoint holds them all."""
        keys = sorted(self.sums)
        stacked = torch.stack([self.sums[k] for k in keys] + [torch.tensor(float(self.seen), device=device)])
        totals = all_reduce_sum(stacked)
        if rank != 0:
            totals = torch.zeros_like(totals)
        self.sums = dict(zip(keys, totals[:-1].unbind()))
        self.seen = int(totals[-1].item())


def lookahead_first_step(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The step at which airbench's lookahead starts its average (a copy of the weights): the first
    multiple of train.lookahead_every after the train.lookahead_start epochs."""
    every = max(1, cfg.lookahead_every)
    return (cfg.lookahead_start * steps_per_epoch // every + 1) * every


class Trainer:
    """Owns the optimizer and the step counter for one model; knows nothing of the method."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: torch.device, steps_per_epoch: int,
                 total_steps: int, train_module: nn.Module | None = None):
        """`cfg`: the config's train section; `steps_per_epoch` and `total_steps` (the run's planned
        optimizer steps, to which the schedule is fitted): the run plan's (ccn.plan.RunPlan)."""
        self.model, self.cfg, self.device = model, cfg, device
        self.train_module = train_module or model  # e.g. a DDP or compiled wrapper of `model`
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.warmup = cfg.warmup_epochs / cfg.epochs
        self.step = 0
        self.optimizer = self._new_optimizer()
        self.fault = os.environ.get("CCN_FAULT")  # testing hook, see ccn.checkpoint.fault_point
        self.autocast = lambda: autocast(device, cfg.bf16)
        self.ema = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
        # airbench's lookahead: the average starts at the first multiple of `every` after the start epochs
        self.lookahead = WeightAverage(model, 0.0, prefix="lookahead.") if cfg.lookahead_every > 0 else None
        self.lookahead_first = lookahead_first_step(cfg, steps_per_epoch)

    def averages(self) -> list[WeightAverage]:
        """The weight averages that follow the model (after a head swap) and go into its checkpoint."""
        return [a for a in (self.ema, self.lookahead) if a is not None]

    def _new_optimizer(self) -> torch.optim.Optimizer:
        groups = parameter_groups(self.model, self.cfg, self.steps_per_epoch)
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
            stopped = group.get("stop_step") is not None and self.step >= group["stop_step"]
            group["lr"] = 0.0 if stopped else self.cfg.lr * factor * group.get("lr_scale", 1.0)

    def _lookahead_step(self) -> None:
        every = self.cfg.lookahead_every
        if self.step < self.lookahead_first or self.step % every:
            return
        if self.step == self.lookahead_first:
            self.lookahead.restart(self.model)
        else:
            self.lookahead.lookahead(self.model, lookahead_decay(self.cfg, self.step, self.total_steps))

    def _show_progress(self) -> bool:
        """The bar is drawn by one process only (rank 0 under torchrun)."""
        return self.cfg.progress and (not is_distributed() or torch.distributed.get_rank() == 0)

    def budget_spent(self) -> bool:
        """True once train.max_steps optimizer steps are done (never when it is 0)."""
        return 0 < self.cfg.max_steps <= self.step

    def _checkpoint_due(self, progress: EpochProgress, num_batches: int) -> bool:
        """A step checkpoint every train.checkpoint_every steps, except where the epoch ends anyway
        (its own checkpoint follows at once)."""
        every = self.cfg.checkpoint_every
        return (every > 0 and self.step % every == 0 and progress.batch < num_batches
                and not self.budget_spent())

    def train_epoch(self, batches: TensorBatches, epoch: int, progress: Optional[EpochProgress] = None,
                    on_checkpoint: Optional[Callable[[EpochProgress, float], None]] = None) -> dict:
        """One pass over `batches` (from `progress`, where a step checkpoint left it, or from the start),
        stopping early once train.max_steps steps are done; returns mean loss parts, images/s and
        seconds. `on_checkpoint(progress, seconds so far)` is called every train.checkpoint_every steps."""
        self.model.train()
        head = self.model.head
        progress = progress or EpochProgress()
        sums = progress.sums
        start = time.perf_counter()
        bar = progress_bar(total=len(batches), initial=progress.batch, desc=f"epoch {epoch}", unit="batch",
                           enabled=self._show_progress())
        for x, y in batches.epoch(epoch, progress.batch):
            if self.budget_spent():
                break
            self._set_lr()
            with self.autocast():
                out = self.train_module(x)
            # the loss in float32 whatever precision the forward pass ran in, for every head
            parts = head.loss({k: v.float() for k, v in out.items()}, y, self.cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            self.optimizer.step()
            self.step += 1
            if self.lookahead is not None:
                self._lookahead_step()
            if self.ema is not None:
                self.ema.update(self.model)
            if self.fault is not None:
                fault_point(f"step-{self.step}")
            for key, value in parts.items():  # summed in float32: a bf16 sum loses ~20 % over 390 steps
                sums[key] = sums.get(key, 0) + value.detach().float() * len(y)
            progress.seen += len(y)
            progress.batch += 1
            bar.update(1)  # counts batches only: reading the loss here would synchronise with the device
            if on_checkpoint is not None and self._checkpoint_due(progress, len(batches)):
                on_checkpoint(progress, progress.seconds + time.perf_counter() - start)
                sums = progress.sums  # gathered onto rank 0 under torchrun
        bar.close()
        if self.lookahead is not None and self.step >= self.lookahead_first:
            self.lookahead.copy_into(self.model)  # each epoch ends on the averaged weights (airbench)
        keys = sorted(sums)
        stacked = torch.stack([sums[k] for k in keys] + [torch.tensor(float(progress.seen), device=self.device)])
        totals = all_reduce_sum(stacked).tolist()  # the one host synchronisation of the epoch
        seconds = progress.seconds + time.perf_counter() - start
        seen = int(totals[-1])
        means = {key: value / max(1, seen) for key, value in zip(keys, totals)}
        return {**means, "images_per_s": seen / max(seconds, 1e-9), "seconds": seconds}
