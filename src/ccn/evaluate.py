"""Evaluation: a model's outputs over a set of batches, and their scores (top-k accuracy per
inference rule, group and within-group accuracy). Needs a model and data, no optimizer."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager, Optional

import torch

from ccn.data.loader import TensorBatches
from ccn.dist import broadcast_buffers


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, scores.shape[1])
    return (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1).float().mean().item()


def per_class_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> list:
    """Top-1 per true class (None for a class with no test image)."""
    correct = (scores.argmax(dim=1) == labels).float()
    num_classes = scores.shape[1]
    hits = torch.zeros(num_classes, device=scores.device).index_add_(0, labels, correct)
    counts = torch.bincount(labels, minlength=num_classes)
    return [float(h / n) if n > 0 else None for h, n in zip(hits.tolist(), counts.tolist())]


def group_metrics(log_p: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> dict:
    """From log p(c|x) (B, C) and the (K, C) group mask: how often the most probable group is the
    true one, how often the true class wins inside its true group, and top-1 per true group.

    Both depend on the partition and are not comparable across partitions: a one-class group has
    within-group accuracy 1 by construction, and fewer, larger groups make group accuracy easier.
    Compare variants with top-1, top-5 and balanced_top1 instead."""
    mask = mask.to(log_p.device)
    group_of = mask.float().argmax(dim=0)
    true_group = group_of[labels]
    group_probs = log_p.exp() @ mask.float().T  # p(k|x) = sum of p(c|x) over the classes of k
    within = log_p.masked_fill(~mask[true_group], float("-inf")).argmax(dim=1) == labels
    correct = log_p.argmax(dim=1) == labels
    per_group = [correct[true_group == k].float().mean().item() if bool((true_group == k).any()) else None
                 for k in range(mask.shape[0])]
    return {
        "group_acc": (group_probs.argmax(dim=1) == true_group).float().mean().item(),
        "within_acc": within.float().mean().item(),
        "per_group_top1": per_group,
    }


def evaluate_outputs(head: torch.nn.Module, out: dict, labels: torch.Tensor, default_rule: str = "soft",
                     mask: Optional[torch.Tensor] = None) -> dict:
    """Top-1/top-5 for every rule the head supports; the default rule's also as `top1`/`top5`."""
    device = next(head.buffers(), next(head.parameters())).device
    out = {k: v.to(device) for k, v in out.items()}
    labels = labels.to(device)
    rules = {}
    for rule in head.rules:
        scores = head.scores(out, rule)
        rules[rule] = {"top1": topk_accuracy(scores, labels, 1), "top5": topk_accuracy(scores, labels, 5)}
    rule = default_rule if default_rule in rules else head.rules[0]
    per_class = per_class_accuracy(head.scores(out, rule), labels)
    present = [a for a in per_class if a is not None]
    result = {"top1": rules[rule]["top1"], "top5": rules[rule]["top5"], "rule": rule, "rules": rules,
              # mean of the per-class top-1: partition-free, and not dominated by a data set's largest classes
              "balanced_top1": sum(present) / max(1, len(present)), "per_class_top1": per_class}
    if mask is not None and "soft" in head.rules:
        result.update(group_metrics(head.scores(out, "soft"), labels, mask))
    return result


@torch.no_grad()
def model_outputs(model: torch.nn.Module, batches: TensorBatches,
                  precision: Callable[[], ContextManager] = nullcontext) -> tuple[dict, torch.Tensor]:
    """Head outputs (on the CPU, float32) and labels for every item of `batches`, in order, in eval mode."""
    broadcast_buffers(model)
    model.eval()
    outputs: dict[str, list] = {}
    labels = []
    for x, y in batches.epoch(0):
        with precision():
            out = model(x)
        for key, value in out.items():
            outputs.setdefault(key, []).append(value.float().cpu())
        labels.append(y.cpu())
    return {k: torch.cat(v) for k, v in outputs.items()}, torch.cat(labels)


def score(model: torch.nn.Module, batches: TensorBatches, mask: Optional[torch.Tensor], rule: str,
          precision: Callable[[], ContextManager] = nullcontext) -> dict:
    """Scores of `model` on `batches`; `mask` is the (K, C) group mask of a hierarchy, if any."""
    out, labels = model_outputs(model, batches, precision)
    return evaluate_outputs(model.head, out, labels, rule, mask)
