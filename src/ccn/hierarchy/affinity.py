"""Class profiles and distances between classes (step 2 of the method).

A class profile is the mean softmax of the images of that class: row c of S says where the
model sends images of class c. Classes with close rows are confused in the same way.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ccn.errors import DataError

METRICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {}


def register_metric(name: str):
    def wrap(fn):
        METRICS[name] = fn
        return fn
    return wrap


def class_profile_sums(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, C) sums of `probs` (N, C) per label, and (C,) counts: the parts that ranks add up. They stay
    on the device of `probs` (an NCCL process group reduces only CUDA tensors), in float64 (float32 on
    MPS, which has no float64)."""
    dtype = torch.float32 if probs.device.type == "mps" else torch.float64
    probs, labels = probs.detach().to(dtype), labels.to(probs.device)
    sums = torch.zeros(num_classes, probs.shape[1], dtype=dtype, device=probs.device).index_add_(0, labels, probs)
    return sums, torch.bincount(labels, minlength=num_classes).to(dtype)


def profiles_from_sums(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean rows; DataError if some class has no sample, since its profile would be undefined."""
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise DataError(f"the probe set has no image of classes {missing[:10]}: class profiles need every class; "
                        "use method.probe_set=train or a larger method.holdout_fraction")
    return sums / counts[:, None]


def class_profiles(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) float64: row c is the mean of `probs` (N, C) over the samples labelled c."""
    return profiles_from_sums(*class_profile_sums(probs, labels, num_classes))


def profiles_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return class_profiles(torch.softmax(logits.double(), dim=1), labels, num_classes)


def prior_corrected(S: torch.Tensor | np.ndarray) -> np.ndarray:
    """Profiles with the prior of the predictions divided out (ours; docs/method.md).

    After one epoch the network predicts a few classes far more often than the rest (on
    Caltech-101: airplanes, Motorbikes, Faces, Leopards), and that mass sits in every row of S, so
    all rows look alike along those columns. With the class-balanced prior of the predictions
    pi_j = (1/C) sum_c S[c, j], the corrected row is

        S'[c, j] = (S[c, j] / pi_j) / sum_j' (S[c, j'] / pi_j'),

    which keeps where class c is sent *relative to how often any class is sent there*."""
    S = np.asarray(S, dtype=np.float64)
    prior = S.mean(axis=0).clip(min=1e-12)
    ratio = S / prior[None, :]
    return ratio / ratio.sum(axis=1, keepdims=True)


@register_metric("l1")
def l1_distance(S: np.ndarray) -> np.ndarray:
    """The paper's metric: sum of absolute differences between the profile rows."""
    t = torch.as_tensor(S, dtype=torch.float64)
    return torch.cdist(t, t, p=1).numpy()


@register_metric("l2")
def l2_distance(S: np.ndarray) -> np.ndarray:
    t = torch.as_tensor(S, dtype=torch.float64)
    return torch.cdist(t, t, p=2).numpy()


@register_metric("cosine")
def cosine_distance(S: np.ndarray) -> np.ndarray:
    t = torch.nn.functional.normalize(torch.as_tensor(S, dtype=torch.float64), dim=1)
    return (1 - t @ t.T).clamp_min(0).numpy()


@register_metric("js")
def js_distance(S: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (natural log, in [0, log 2]) between the rows as distributions."""
    p = torch.as_tensor(S, dtype=torch.float64).clamp_min(1e-12)
    p = p / p.sum(1, keepdim=True)
    plogp = (p * p.log()).sum(1)
    m = (p[:, None, :] + p[None, :, :]) / 2  # C x C x C: fine up to about 1,000 classes
    cross = (m * m.log()).sum(2)
    return ((plogp[:, None] + plogp[None, :]) / 2 - cross).clamp_min(0).numpy()


@register_metric("confusion")
def confusion_distance(S: np.ndarray) -> np.ndarray:
    """1 - symmetric confusion (HD-CNN's idea): classes that take each other's mass are close (ours)."""
    shared = (S + S.T) / 2
    np.fill_diagonal(shared, 0)
    top = shared.max()
    return 1 - shared / top if top > 0 else np.ones_like(shared)


def class_distances(S, metric: str = "l1") -> np.ndarray:
    """Symmetric (C, C) distances with a zero diagonal."""
    from ccn.errors import ConfigError

    if metric not in METRICS:
        raise ConfigError(f"method.metric={metric!r} is not known; choose one of: {', '.join(METRICS)}")
    D = METRICS[metric](np.asarray(S, dtype=np.float64))
    D = (D + D.T) / 2
    np.fill_diagonal(D, 0)
    return D
