"""Step 2 of the method: class profiles, class distances, partitions and the Hierarchy object."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ccn.hierarchy.affinity import METRICS, class_distances, class_profiles, profiles_from_logits
from ccn.hierarchy.clustering import (default_group_count, learned_partition, oracle_partition,
                                      random_partition)
from ccn.hierarchy.tree import Hierarchy, leaves


def build_hierarchy(profiles: torch.Tensor | np.ndarray, classes: list[str], metric: str = "l1",
                    groups: Optional[int] = None, threshold: Optional[float] = None, linkage: str = "average",
                    min_size: Optional[int] = None, max_size: Optional[int] = None) -> Hierarchy:
    """Group classes whose profiles are close: the learned partition of the method."""
    S = np.asarray(profiles, dtype=np.float64)
    D = class_distances(S, metric)
    k = groups if groups is not None or threshold is not None else default_group_count(len(classes))
    parts, Z = learned_partition(D, k, threshold, linkage, min_size, max_size)
    how = {"partition": "learned", "metric": metric, "linkage": linkage, "groups": len(parts)}
    return Hierarchy(classes, parts, how, distances=D, merges=Z)


__all__ = ["METRICS", "Hierarchy", "build_hierarchy", "class_distances", "class_profiles", "default_group_count",
           "leaves", "oracle_partition", "profiles_from_logits", "random_partition"]


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


__all__ += ["agreement", "partition_labels"]
