"""The Hierarchy: the class groups a run found, with class names, saved as `hierarchy.json`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.nn import functional as F

from ccn.errors import CCNError, ConfigError


def group_index(groups: list[list[int]], num_classes: int) -> torch.Tensor:
    """(C,) long tensor: the group of each class; every class must be in exactly one group."""
    group_of = torch.full((num_classes,), -1, dtype=torch.long)
    for k, members in enumerate(groups):
        for c in members:
            if group_of[c] != -1:
                raise ConfigError(f"class {c} is in groups {int(group_of[c])} and {k}: a partition needs disjoint groups")
            group_of[c] = k
    if (group_of < 0).any():
        missing = (group_of < 0).nonzero().flatten().tolist()
        raise ConfigError(f"classes {missing[:10]} are in no group: a partition must cover every class")
    return group_of


def mask_matrix(group_of: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(K, C) bool: M[k, c] is True where class c belongs to group k."""
    return F.one_hot(group_of, num_groups).T.bool()


def leaves(node) -> list[int]:
    """All class indices under a node of a nested-list tree."""
    return [node] if not isinstance(node, list) else [c for child in node for c in leaves(child)]


def tree_depth(node) -> int:
    return 0 if not isinstance(node, list) else 1 + max(tree_depth(child) for child in node)


def _map_tree(node, fn):
    return [_map_tree(child, fn) for child in node] if isinstance(node, list) else fn(node)


@dataclass
class Hierarchy:
    """`tree` is a nested list whose leaves are class indices; its top-level entries are the groups.

    A depth-1 tree is a plain partition, e.g. [[0, 3], [1, 2]]; a depth-2 tree splits groups
    again, e.g. [[[0], [3, 5]], [1, 2, 4]]. `merges` (scipy linkage matrix) and `distances` keep
    what the clustering saw, for plots."""

    classes: list[str]
    tree: list
    how: dict = field(default_factory=dict)  # partition kind, metric, linkage, epoch ...
    distances: Optional[np.ndarray] = None
    merges: Optional[np.ndarray] = None

    def __post_init__(self):
        group_index(self.groups, len(self.classes))  # raises unless every class is in exactly one group

    @property
    def groups(self) -> list[list[int]]:
        return [sorted(leaves(g)) for g in self.tree]

    @property
    def depth(self) -> int:
        return max(1, tree_depth(self.tree) - 1)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def group_of(self) -> torch.Tensor:
        return group_index(self.groups, self.num_classes)

    def mask(self) -> torch.Tensor:
        """(K, C) bool mask matrix of the level-1 groups."""
        return mask_matrix(self.group_of(), len(self.tree))

    def named_groups(self) -> list[list[str]]:
        return [[self.classes[c] for c in g] for g in self.groups]

    def to_json(self) -> dict:
        return {
            "classes": self.classes,
            "groups": self.named_groups(),
            "tree": _map_tree(self.tree, lambda c: self.classes[c]),
            "depth": self.depth,
            "how": self.how,
            "distances": None if self.distances is None else np.round(self.distances, 6).tolist(),
            "merges": None if self.merges is None else self.merges.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict) -> "Hierarchy":
        try:
            classes = list(data["classes"])
            index = {name: i for i, name in enumerate(classes)}
            tree = _map_tree(data.get("tree") or data["groups"], lambda name: index[name])
        except (KeyError, TypeError) as err:
            raise CCNError(f"hierarchy.json is malformed ({err}): it needs 'classes' and 'groups' of class names") from None
        arr = lambda key: None if data.get(key) is None else np.asarray(data[key], dtype=np.float64)  # noqa: E731
        return cls(classes, tree, data.get("how", {}), arr("distances"), arr("merges"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Hierarchy":
        path = Path(path)
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise CCNError(f"cannot read {path} ({err}): is this a ccn run folder of a ccn (not flat) run?") from None


def partition_labels(groups: list[list[int]], num_classes: int) -> list[int]:
    labels = [0] * num_classes
    for k, members in enumerate(groups):
        for c in members:
            labels[c] = k
    return labels


def agreement(groups_a: list[list[int]], groups_b: list[list[int]] | list[int], num_classes: int) -> dict:
    """Adjusted Rand index and NMI between two partitions of the classes (groups or per-class labels)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    a = partition_labels(groups_a, num_classes)
    b = groups_b if groups_b and not isinstance(groups_b[0], list) else partition_labels(groups_b, num_classes)
    return {"ari": float(adjusted_rand_score(b, a)), "nmi": float(normalized_mutual_info_score(b, a))}
