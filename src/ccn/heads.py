"""Heads on pooled features: the flat classifier, the three-level CCN head and the tree head.

Every head returns a dict of logits and offers the same three methods:
- `loss(out, y)` -> dict of parts (`loss` is the total to optimise; the others are for logs);
- `scores(out, rule)` -> (B, C) class scores for an inference rule (higher is better);
- `rules`: the inference rules it supports.

Three-level head (docs/method.md): level 1 `z = W1 h` (the flat head), level 2 `u = W2 h` (K group
logits), level 3 `v = W3 h` (C class logits, read only through the group masks). Then
p(c|x) = p(g(c)|x) * p(c|g(c),x) with p(c|k,x) a softmax of v over the classes of group k.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ccn.errors import ConfigError
from ccn.hierarchy.tree import group_index, mask_matrix

_HARD_BONUS = 1e4  # lifts the classes of the chosen group above all others while keeping their order


class FlatHead(nn.Module):
    """The ordinary fully connected classifier (level 1)."""

    rules = ("flat",)

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.flat = nn.Linear(in_features, num_classes)

    def forward(self, h: torch.Tensor) -> dict:
        return {"z": self.flat(h)}

    def loss(self, out: dict, y: torch.Tensor, label_smoothing: float = 0.0) -> dict:
        flat = F.cross_entropy(out["z"].float(), y, label_smoothing=label_smoothing)  # float32 under autocast too
        return {"loss": flat, "flat": flat}

    def scores(self, out: dict, rule: str = "flat") -> torch.Tensor:
        return out["z"].float()


def within_group_log_probs(v: torch.Tensor, group_of: torch.Tensor, num_groups: int) -> torch.Tensor:
    """log p(c | g(c), x) for every class: v minus the log-sum-exp of v over the class's own group.

    A grouped (segment) log-sum-exp: the per-group maximum and the sum of exponentials are gathered
    by group index, so only a class's own group enters its normaliser and the temporaries are
    (B, K) and (B, C), never (B, K, C) (1 GB per batch of 256 at 10,000 classes in 100 groups)."""
    index = group_of.expand_as(v)
    peak = v.new_full((v.shape[0], num_groups), float("-inf")).scatter_reduce(1, index, v.detach(), "amax")
    shifted = v - peak.gather(1, index)  # the peak only keeps exp() in range: no gradient needed through it
    totals = torch.zeros_like(peak).scatter_add(1, index, shifted.exp())
    return shifted - totals.gather(1, index).log()


def smoothed_class_nll(log_probs: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Per-example label-smoothed negative log-likelihood over classes, from log p(c|x) (B, C).

    The target is the same for every head: (1 - eps) on the true class and eps spread evenly over
    all C classes, whatever the grouping -- exactly what `F.cross_entropy(label_smoothing=eps)` does
    for the flat head. Smoothing over groups and then inside each group would give the classes of
    small groups far more target mass than those of large ones (docs/method.md)."""
    nll = -log_probs.gather(1, y[:, None]).squeeze(1)
    if smoothing > 0:
        nll = (1 - smoothing) * nll + smoothing * -log_probs.mean(1)
    return nll


def hierarchical_loss(log_p: torch.Tensor, cluster_nll: torch.Tensor, flat_logits: torch.Tensor,
                      y: torch.Tensor, smoothing: float, flat_weight: float, normalize: bool = False) -> dict:
    """The loss of a hierarchical head, split into logged parts.

    -log p(y|x) = `cluster` (-log p(group of y | x)) + `within` (the rest of the path). Label
    smoothing acts on log p(c|x) over all classes and is booked on `within`, so `cluster + within`
    is the smoothed class-level loss, and `flat` (the level-1 head, float32) is added with its weight.

    `normalize` (method.normalize_loss, the loss-scale control) divides the total by the sum of the
    weights, 1 + flat_weight, so the backbone's gradient has the flat baseline's scale instead of
    about (1 + flat_weight) times it (docs/method.md, "Loss scale"). The FlatHead's single part has
    weight 1, so the same rule leaves the flat baseline unchanged."""
    class_loss = smoothed_class_nll(log_p, y, smoothing).mean()
    cluster = cluster_nll.mean()
    within = class_loss - cluster
    flat = F.cross_entropy(flat_logits.float(), y, label_smoothing=smoothing)
    total = class_loss + flat_weight * flat if flat_weight > 0 else class_loss
    if normalize:
        total = total / (1 + flat_weight)
    return {"loss": total, "cluster": cluster, "within": within, "flat": flat}


def _soft(head: HierarchicalHead, out: dict) -> torch.Tensor:
    return head.class_log_probs(out)


def _hard(head: HierarchicalHead, out: dict) -> torch.Tensor:
    """The literal reading: pick the group (each node down the path), then the class inside it; classes
    that share more of the chosen path rank first, each tier ordered by log p(c|x)."""
    return head.class_log_probs(out) + _HARD_BONUS * head.path_agreement(out)


def _flat(head: HierarchicalHead, out: dict) -> torch.Tensor:
    return out["z"].float()


def _blend(head: HierarchicalHead, out: dict) -> torch.Tensor:
    w = head.blend_weight
    return w * head.class_log_probs(out) + (1 - w) * F.log_softmax(out["z"].float(), dim=1)


# the inference rules of every hierarchical head: rule -> (head, outputs) -> (B, C) class scores
RULE_SCORES = {"soft": _soft, "hard": _hard, "flat": _flat, "blend": _blend}
RULES = tuple(RULE_SCORES)


class HierarchicalHead(nn.Module):
    """What ThreeLevelHead and TreeHead share: the inference rules (RULE_SCORES), read through two
    methods each head defines -- `class_log_probs(out)`: log p(c|x), (B, C); `path_agreement(out)`:
    (B, C), how many nodes of the greedily chosen root-to-leaf path lie on each class's path."""

    rules = RULES
    blend_weight: float

    def class_log_probs(self, out: dict) -> torch.Tensor:
        raise NotImplementedError

    def path_agreement(self, out: dict) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, out: dict, rule: str = "soft") -> torch.Tensor:
        if rule not in RULE_SCORES:
            raise ConfigError(f"unknown inference rule {rule!r}; choose one of: {', '.join(self.rules)}")
        return RULE_SCORES[rule](self, out)


class ThreeLevelHead(HierarchicalHead):
    """Flat head `z`, cluster head `u` and masked class head `v` over one partition of the classes."""

    def __init__(self, in_features: int, groups: list[list[int]], flat: nn.Linear | None = None,
                 flat_weight: float = 1.0, blend_weight: float = 0.5, init_from_flat: bool = True,
                 normalize_loss: bool = False):
        super().__init__()
        num_classes = sum(len(g) for g in groups)
        group_of = group_index(groups, num_classes)
        self.register_buffer("group_of", group_of)
        self.register_buffer("mask", mask_matrix(group_of, len(groups)))
        self.flat = flat if flat is not None else nn.Linear(in_features, num_classes)
        self.cluster = nn.Linear(in_features, len(groups))
        self.masked = nn.Linear(in_features, num_classes)
        if init_from_flat and flat is not None:  # ours: level 3 starts from what level 1 has learned
            with torch.no_grad():
                self.masked.weight.copy_(flat.weight)
                self.masked.bias.copy_(flat.bias)
        self.flat_weight, self.blend_weight, self.normalize_loss = flat_weight, blend_weight, normalize_loss

    @property
    def num_groups(self) -> int:
        return self.mask.shape[0]

    def forward(self, h: torch.Tensor) -> dict:
        return {"z": self.flat(h), "u": self.cluster(h), "v": self.masked(h)}

    def log_probs(self, out: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(c|x), log p(c|g(c),x)), both (B, C)."""
        u, v = out["u"].float(), out["v"].float()
        log_within = within_group_log_probs(v, self.group_of, self.num_groups)
        return F.log_softmax(u, dim=1)[:, self.group_of] + log_within, log_within

    def loss(self, out: dict, y: torch.Tensor, label_smoothing: float = 0.0) -> dict:
        log_p, _ = self.log_probs(out)
        cluster_nll = F.cross_entropy(out["u"].float(), self.group_of[y], reduction="none")
        return hierarchical_loss(log_p, cluster_nll, out["z"], y, label_smoothing, self.flat_weight,
                                 self.normalize_loss)

    def class_log_probs(self, out: dict) -> torch.Tensor:
        return self.log_probs(out)[0]

    def path_agreement(self, out: dict) -> torch.Tensor:
        return self.mask[out["u"].argmax(dim=1)].float()  # the path is one step: the chosen group


class TreeHead(HierarchicalHead):
    """A class tree of any depth: p(c|x) is the product of the sibling softmaxes along the path to c.

    One linear layer gives a logit to every non-root node; a grouped (segment) softmax over the
    children of each node and one matrix product with the path-incidence matrix give log p(c|x)
    for all classes at once, with no Python loop over nodes."""

    def __init__(self, in_features: int, tree: list, num_classes: int, flat: nn.Linear | None = None,
                 flat_weight: float = 1.0, blend_weight: float = 0.5, normalize_loss: bool = False):
        super().__init__()
        parent, leaf_class = flatten_tree(tree)
        num_edges = len(parent) - 1  # every node but the root owns one logit
        if sorted(leaf_class.values()) != list(range(num_classes)):
            raise ConfigError("the class tree must hold every class exactly once")
        is_leaf = torch.zeros(num_edges, dtype=torch.bool)
        is_leaf[[node - 1 for node in leaf_class]] = True
        self.register_buffer("edge_parent", torch.tensor(parent[1:], dtype=torch.long))
        self.register_buffer("is_leaf", is_leaf)
        # each class's path as edge numbers (C, height), padded with num_edges, the number of a zero
        # column appended in _path_sum: (C, height) integers instead of a dense (edges, C) matrix,
        # which held about C x C floats (400 MB at 10,000 classes). Rebuilt from the tree, not saved.
        self.height = tree_height(parent)
        self.register_buffer("ancestors", path_edges(parent, leaf_class, num_classes, self.height), persistent=False)
        self.num_nodes = len(parent)
        self.flat = flat if flat is not None else nn.Linear(in_features, num_classes)
        self.nodes = nn.Linear(in_features, num_edges)
        self.flat_weight, self.blend_weight, self.normalize_loss = flat_weight, blend_weight, normalize_loss

    def forward(self, h: torch.Tensor) -> dict:
        return {"z": self.flat(h), "t": self.nodes(h)}

    def edge_log_probs(self, t: torch.Tensor) -> torch.Tensor:
        """log p(node | parent, x) for every non-root node: a softmax over each node's children."""
        t = t.float()
        index = self.edge_parent.expand_as(t)
        peak = t.new_full((t.shape[0], self.num_nodes), float("-inf")).scatter_reduce(1, index, t, "amax")
        shifted = t - peak.gather(1, index)
        totals = torch.zeros_like(peak).scatter_add(1, index, shifted.exp())
        return shifted - totals.gather(1, index).log()

    def class_log_probs(self, out: dict) -> torch.Tensor:
        return self._path_sum(self.edge_log_probs(out["t"]))

    def _path_sum(self, edges: torch.Tensor) -> torch.Tensor:
        """Sum edge log-probabilities along each class's path, in float32 even under autocast."""
        with torch.autocast(device_type=edges.device.type, enabled=False):
            padded = F.pad(edges.float(), (0, 1))  # the zero column that short paths point to
            return padded[:, self.ancestors].sum(-1)

    def loss(self, out: dict, y: torch.Tensor, label_smoothing: float = 0.0) -> dict:
        edges = self.edge_log_probs(out["t"])
        on_path = self.on_path(y)  # (B, E)
        cluster_nll = -(edges * on_path * (~self.is_leaf)).sum(1)  # every step of the path above the leaf
        return hierarchical_loss(self._path_sum(edges), cluster_nll, out["z"], y, label_smoothing, self.flat_weight,
                                 self.normalize_loss)

    def on_path(self, y: torch.Tensor) -> torch.Tensor:
        """(B, E) float: 1 on the edges of each label's path from the root to its leaf."""
        marks = torch.zeros(len(y), self.edge_parent.numel() + 1, device=y.device)
        return marks.scatter_(1, self.ancestors[y], 1.0)[:, :-1]

    def _greedy_path(self, t: torch.Tensor) -> torch.Tensor:
        """(B, E) bool: the nodes picked by descending from the root to the best child at each step.

        The descent takes `height` steps for every row (a row at its leaf picks nothing more), a
        loop of fixed length rather than one that stops on a tensor value, so the rule traces (ONNX
        export, torch.compile) the same for every input."""
        picked = torch.zeros_like(t, dtype=torch.bool)
        current = torch.zeros(t.shape[0], dtype=torch.long, device=t.device)
        for _ in range(self.height):
            children = self.edge_parent[None, :] == current[:, None]  # (B, E); none where current is -1
            best = t.masked_fill(~children, float("-inf")).argmax(dim=1)
            has_children = children.any(dim=1)
            picked = picked | (F.one_hot(best, t.shape[1]).bool() & has_children[:, None])
            current = torch.where(has_children, best + 1, torch.full_like(current, -1))
        return picked

    def path_agreement(self, out: dict) -> torch.Tensor:
        return self._path_sum(self._greedy_path(out["t"].float()).float())  # picked nodes on each class's path


def flatten_tree(tree: list) -> tuple[list[int], dict[int, int]]:
    """Nested lists (leaves are class indices) -> (parent of each node, {leaf node: class}).

    Node 0 is the root; nodes are numbered breadth first."""
    parent, leaf_class = [-1], {}
    queue = [(0, tree)]
    while queue:
        node, children = queue.pop(0)
        for child in children:
            index = len(parent)
            parent.append(node)
            if isinstance(child, list):
                queue.append((index, child))
            else:
                leaf_class[index] = int(child)
    return parent, leaf_class


def path_edges(parent: list[int], leaf_class: dict[int, int], num_classes: int, height: int) -> torch.Tensor:
    """(C, height) long: the edges (node - 1) from each class's leaf up to the root, padded with the
    number of edges (a zero column in TreeHead._path_sum)."""
    num_edges = len(parent) - 1
    paths = torch.full((num_classes, height), num_edges, dtype=torch.long)
    for node, c in leaf_class.items():
        step, walk = 0, node
        while walk != 0:
            paths[c, step] = walk - 1
            step, walk = step + 1, parent[walk]
    return paths


def tree_height(parent: list[int]) -> int:
    """Edges on the longest root-to-leaf path (nodes numbered breadth first: parents come first)."""
    depth = [0] * len(parent)
    for node in range(1, len(parent)):
        depth[node] = depth[parent[node]] + 1
    return max(depth)
