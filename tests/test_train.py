"""The trainer's pieces, each checked directly: the learning-rate schedules (values at known points,
with and without warm-up) and which parameters get weight decay."""

import math

import pytest
import torch
from torch import nn

from ccn.config import TrainConfig
from ccn.train import Trainer, lr_factor, parameter_groups


def factor(schedule, progress, warmup=0.0, **kw):
    return lr_factor(TrainConfig(schedule=schedule, **kw), progress, warmup)


@pytest.mark.parametrize("schedule, points", [
    ("cosine", {0.0: 1.0, 0.25: 0.5 * (1 + math.cos(math.pi / 4)), 0.5: 0.5, 1.0: 0.0}),
    ("constant", {0.0: 1.0, 0.5: 1.0, 1.0: 1.0}),
    ("step", {0.0: 1.0, 0.49: 1.0, 0.5: 0.1, 0.74: 0.1, 0.75: 0.01, 1.0: 0.01}),  # milestones 0.5, 0.75; gamma 0.1
    ("onecycle", {0.0: 0.1, 0.15: 0.55, 0.3: 1.0, 0.65: 0.5, 1.0: 0.0}),  # up over 30 %, then linearly to 0
])
def test_each_schedule_without_warmup(schedule, points):
    for progress, expected in points.items():
        assert factor(schedule, progress) == pytest.approx(expected, abs=1e-12), (schedule, progress)


@pytest.mark.parametrize("schedule, points", [
    # warm-up over the first 20 %: linear from lr/10 to lr, then the schedule
    ("cosine", {0.0: 0.1, 0.1: 0.55, 0.2: 1.0, 0.6: 0.5, 1.0: 0.0}),  # the cosine spans what follows the warm-up
    ("constant", {0.0: 0.1, 0.1: 0.55, 0.2: 1.0, 0.9: 1.0}),
    ("step", {0.1: 0.55, 0.3: 1.0, 0.5: 0.1, 0.8: 0.01}),  # milestones stay fractions of the whole run
    ("onecycle", {0.1: 0.55, 0.2: 1.0, 0.6: 0.5, 1.0: 0.0}),  # the warm-up is the rise
])
def test_each_schedule_after_a_warmup(schedule, points):
    for progress, expected in points.items():
        assert factor(schedule, progress, warmup=0.2) == pytest.approx(expected, abs=1e-12), (schedule, progress)


def test_step_schedule_uses_its_own_milestones_and_gamma():
    assert factor("step", 0.35, milestones=[0.3, 0.6], gamma=0.5) == 0.5
    assert factor("step", 0.65, milestones=[0.3, 0.6], gamma=0.5) == 0.25


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)


def test_weight_decay_goes_to_weight_matrices_and_kernels_only():
    model = Tiny()
    decay, rest = parameter_groups(model, TrainConfig(weight_decay=5e-4), steps_per_epoch=1)
    assert decay["weight_decay"] == 5e-4 and rest["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == ids([model.conv.weight, model.fc.weight])
    assert ids(rest["params"]) == ids([model.conv.bias, model.norm.weight, model.norm.bias, model.fc.bias])


def test_the_trainer_sets_the_scheduled_rate_per_step_and_decays_only_the_decay_group():
    model = Tiny()
    cfg = TrainConfig(epochs=4, warmup_epochs=1, lr=0.2, momentum=0.0, weight_decay=0.5, schedule="cosine")
    trainer = Trainer(model, cfg, torch.device("cpu"), steps_per_epoch=5, total_steps=20)  # 5 of warm-up
    for step, expected in {0: 0.1, 5: 1.0, 10: 0.5 * (1 + math.cos(math.pi / 3)), 20: 0.0}.items():
        trainer.step = step
        trainer._set_lr()
        assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([0.2 * expected] * 2), step
    # a step with zero gradients moves only the decayed parameters: p <- p - lr * wd * p
    trainer.step = 5
    trainer._set_lr()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    for name, p in model.named_parameters():
        shrink = 1 - 0.2 * 0.5 if p.ndim >= 2 else 1.0
        assert torch.allclose(p, before[name] * shrink), name
