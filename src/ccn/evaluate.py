"""Evaluation: a model's outputs over a set of batches, and their scores (top-k accuracy per
inference rule, group and within-group accuracy). Needs a model and data, no optimizer.

Scores are tallied batch by batch on the evaluation device: counts of hits, never the whole set's
(N, C) outputs or the heads' (B, K, C) intermediates for all N images at once (ImageNet-1k validation
would need 6.4 GB per such tensor), and no host synchronisation until the end. Under torchrun each
rank tallies its share of the batches and the counts are summed over ranks, so every rank ends with
the same scores.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager, Iterator, Optional

import torch

from ccn.data.loader import TensorBatches
from ccn.dist import all_reduce_sum, broadcast_buffers
from ccn.hierarchy.truth import TrueTree


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(B,) bool: the label is among the `k` best scores (k is capped at the class count)."""
    k = min(k, scores.shape[1])
    return (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


class TreeScores:
    """The data set's true tree as tensors for tallying (ccn.hierarchy.truth): each class's coarse
    group, and the (C, C) heights of the lowest common ancestors."""

    def __init__(self, tree: TrueTree, device: torch.device):
        self.coarse = torch.tensor(tree.coarse, device=device)
        self.heights = torch.from_numpy(tree.lca_heights()).to(device=device, dtype=torch.float32)
        self.source = tree.source

    def counts(self, predicted: torch.Tensor, labels: torch.Tensor) -> dict:
        wrong = predicted != labels
        return {"tree.coarse_hits": (self.coarse[predicted] == self.coarse[labels]).sum()[None],
                "tree.mistakes": wrong.sum()[None],
                "tree.severity": (self.heights[labels, predicted] * wrong).sum()[None]}

    def result(self, counts: dict, n: float) -> dict:
        mistakes = counts["tree.mistakes"][0]
        return {"coarse_top1": counts["tree.coarse_hits"][0] / n,
                "mistake_severity": counts["tree.severity"][0] / mistakes if mistakes else None,
                "tree": self.source, "coarse_groups": int(self.coarse.unique().numel())}


class ScoreTally:
    """Running counts for `score`'s result: hits per rule, per class and per group, and with
    the data set's true tree, coarse hits and the severity of the mistakes (of the default rule)."""

    def __init__(self, head: torch.nn.Module, default_rule: str, mask: Optional[torch.Tensor],
                 device: torch.device, tree: Optional[TrueTree] = None):
        self.head, self.device = head, device
        self.rule = default_rule if default_rule in head.rules else head.rules[0]
        self.mask = mask.to(device) if mask is not None and "soft" in head.rules else None
        self.tree = TreeScores(tree, device) if tree is not None else None
        self.parts: dict[str, torch.Tensor] = {}

    def _add(self, name: str, value: torch.Tensor) -> None:
        value = value.to(torch.float64 if self.device.type != "mps" else torch.float32)
        self.parts[name] = self.parts[name] + value if name in self.parts else value

    def add(self, out: dict, labels: torch.Tensor) -> None:
        out = {k: v.to(self.device).float() for k, v in out.items()}
        labels = labels.to(self.device)
        self._add("n", torch.tensor([len(labels)], device=self.device))
        for rule in self.head.rules:
            scores = self.head.scores(out, rule)
            self._add(f"{rule}.top1", topk_hits(scores, labels, 1).sum()[None])
            self._add(f"{rule}.top5", topk_hits(scores, labels, 5).sum()[None])
            if rule == self.rule:
                correct = (scores.argmax(dim=1) == labels).float()
                num_classes = scores.shape[1]
                self._add("class.hits", torch.zeros(num_classes, device=self.device).index_add_(0, labels, correct))
                self._add("class.count", torch.bincount(labels, minlength=num_classes))
                if self.tree is not None:
                    for name, value in self.tree.counts(scores.argmax(dim=1), labels).items():
                        self._add(name, value)
        if self.mask is not None:
            for name, value in group_counts(self.head.scores(out, "soft"), labels, self.mask).items():
                self._add(name, value)

    def result(self, over_ranks: bool = True) -> dict:
        """The scores, with the counts summed over ranks when `over_ranks` (one host synchronisation)."""
        names = sorted(self.parts)
        sizes = [len(self.parts[k]) for k in names]
        stacked = torch.cat([self.parts[k] for k in names])
        flat = (all_reduce_sum(stacked) if over_ranks else stacked).tolist()
        counts, start = {}, 0
        for name, size in zip(names, sizes):
            counts[name], start = flat[start:start + size], start + size
        n = max(1.0, counts["n"][0])
        rules = {r: {"top1": counts[f"{r}.top1"][0] / n, "top5": counts[f"{r}.top5"][0] / n} for r in self.head.rules}
        per_class = ratios(counts["class.hits"], counts["class.count"])
        present = [a for a in per_class if a is not None]
        result = {"top1": rules[self.rule]["top1"], "top5": rules[self.rule]["top5"], "rule": self.rule,
                  "rules": rules,
                  # mean of the per-class top-1: partition-free, and not dominated by a data set's largest classes
                  "balanced_top1": sum(present) / max(1, len(present)), "per_class_top1": per_class}
        if self.tree is not None:
            result["truth"] = self.tree.result(counts, n)
        if self.mask is not None:
            result.update({"group_acc": counts["group.hits"][0] / n, "within_acc": counts["within.hits"][0] / n,
                           "per_group_top1": ratios(counts["group.correct"], counts["group.count"])})
        return result


def ratios(hits: list, counts: list) -> list:
    """hits / count per entry, None where the count is 0 (a class or group with no test image)."""
    return [h / c if c > 0 else None for h, c in zip(hits, counts)]


def group_counts(log_p: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> dict:
    """From log p(c|x) (B, C) and the (K, C) group mask: how many times the most probable group is the
    true one, the true class wins inside its true group, and (per true group) the class is right."""
    group_of = mask.float().argmax(dim=0)
    true_group = group_of[labels]
    group_probs = log_p.exp() @ mask.float().T  # p(k|x) = sum of p(c|x) over the classes of k
    within = log_p.masked_fill(~mask[true_group], float("-inf")).argmax(dim=1) == labels
    correct = (log_p.argmax(dim=1) == labels).float()
    num_groups = mask.shape[0]
    return {
        "group.hits": (group_probs.argmax(dim=1) == true_group).sum()[None],
        "within.hits": within.sum()[None],
        "group.correct": torch.zeros(num_groups, device=log_p.device).index_add_(0, true_group, correct),
        "group.count": torch.bincount(true_group, minlength=num_groups),
    }




def _views(x: torch.Tensor, tta: str) -> list[tuple[float, torch.Tensor]]:
    """(weight, images) of each view `train.tta` scores: the image; with its mirror image 1/2 each;
    mirror_translate adds, at 1/4 each, both views shifted one pixel up-left and down-right with
    the border reflected (airbench's weights: 1/4, 1/4, 1/8, 1/8, 1/8, 1/8)."""
    if tta == "none":
        return [(1.0, x)]
    mirrored = [(0.5, x), (0.5, x.flip(-1))]
    if tta == "mirror":
        return mirrored
    h, w = x.shape[-2:]  # mirror_translate: the config allows no other value (TrainConfig.tta)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]
    return [(wt / 2, v) for wt, v in mirrored] + [(wt / 4, v.flip(-1) if flip else v)
                                                  for v in shifted for wt, flip in ((0.5, False), (0.5, True))]


def tta_outputs(model: torch.nn.Module, x: torch.Tensor, tta: str = "none") -> dict:
    """The head's outputs (every entry, float32) averaged over the views of `train.tta` with their
    weights: every inference rule then scores the same averaged outputs, whatever the head."""
    total: dict = {}
    for weight, view in _views(x, tta):
        if view is not x and x.is_contiguous(memory_format=torch.channels_last):
            view = view.contiguous(memory_format=torch.channels_last)
        for k, v in model(view).items():
            total[k] = total[k] + weight * v.float() if k in total else weight * v.float()
    return total


@torch.no_grad()
def batch_outputs(model: torch.nn.Module, batches: TensorBatches,
                  precision: Callable[[], ContextManager] = nullcontext,
                  tta: str = "none") -> Iterator[tuple[dict, torch.Tensor]]:
    """(head outputs in float32, labels) per batch, on the batches' device, in eval mode; with `tta`
    the outputs averaged over the test-time views (see tta_outputs)."""
    broadcast_buffers(model)
    model.eval()
    for x, y in batches.epoch(0):
        with precision():
            out = tta_outputs(model, x, tta)
        yield {k: v.float() for k, v in out.items()}, y


def score(model: torch.nn.Module, batches: TensorBatches, mask: Optional[torch.Tensor], rule: str,
          precision: Callable[[], ContextManager] = nullcontext, tta: str = "none",
          tree: Optional[TrueTree] = None) -> dict:
    """Scores of `model` on `batches` (summed over ranks); `mask` is the (K, C) group mask of a hierarchy;
    `tta` (train.tta) averages the outputs over test-time views before every rule scores them; `tree`
    (the data set's true hierarchy) adds coarse top-1 and mistake severity as `truth`."""
    tally = ScoreTally(model.head, rule, mask, batches.labels.device, tree)
    for out, y in batch_outputs(model, batches, precision, tta):
        tally.add(out, y)
    return tally.result()
