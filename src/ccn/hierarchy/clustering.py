"""Partitions of the classes: learned (agglomerative on class distances), random, oracle."""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.cluster.hierarchy import cut_tree, fcluster, linkage
from scipy.spatial.distance import squareform

from ccn.errors import ConfigError


def default_group_count(num_classes: int) -> int:
    """Ours: round(sqrt(C)) groups (10 for CIFAR-100), at least 2 when there are 4+ classes."""
    return max(1, min(num_classes, int(round(num_classes ** 0.5))))


def merge_tree(D: np.ndarray, method: str = "average") -> np.ndarray:
    """scipy linkage matrix ((C - 1) x 4) of agglomerative clustering on the distances D."""
    return linkage(squareform(D, checks=False), method=method)


def _labels_to_groups(labels: np.ndarray) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for c, k in enumerate(labels.tolist()):
        groups.setdefault(k, []).append(c)
    return sorted(groups.values(), key=lambda g: g[0])


def cut(Z: np.ndarray, groups: Optional[int] = None, threshold: Optional[float] = None) -> list[list[int]]:
    """Cut a merge tree into exactly `groups` groups, or at a distance `threshold`."""
    num_classes = Z.shape[0] + 1
    if threshold is not None:
        return _labels_to_groups(fcluster(Z, t=threshold, criterion="distance"))
    if groups is None or not 1 <= groups <= num_classes:
        raise ConfigError(f"method.groups={groups} is impossible with {num_classes} classes: "
                          f"choose between 1 and {num_classes}")
    return _labels_to_groups(cut_tree(Z, n_clusters=groups).flatten())


def _mean_distance(D: np.ndarray, a: list[int], b: list[int]) -> float:
    return float(D[np.ix_(a, b)].mean())


def enforce_sizes(groups: list[list[int]], D: np.ndarray, min_size: Optional[int],
                  max_size: Optional[int], method: str = "average") -> list[list[int]]:
    """Split groups above `max_size` along their own merge tree; merge groups below `min_size`
    into the group at the smallest mean distance (ours)."""
    groups = [sorted(g) for g in groups]
    if max_size is not None:
        done: list[list[int]] = []
        while groups:
            g = groups.pop()
            if len(g) <= max_size:
                done.append(g)
                continue
            sub = cut(merge_tree(D[np.ix_(g, g)], method), groups=2)
            groups += [[g[i] for i in part] for part in sub]
        groups = done
    if min_size is not None:
        while len(groups) > 1:
            small = min(groups, key=len)
            if len(small) >= min_size:
                break
            groups.remove(small)
            nearest = min(groups, key=lambda other: _mean_distance(D, small, other))
            nearest += small
            nearest.sort()
    return sorted(groups, key=lambda g: g[0])


def learned_partition(D: np.ndarray, groups: Optional[int] = None, threshold: Optional[float] = None,
                      method: str = "average", min_size: Optional[int] = None,
                      max_size: Optional[int] = None) -> tuple[list[list[int]], np.ndarray]:
    """Agglomerative clustering of the classes on D: (groups, merge tree)."""
    Z = merge_tree(D, method)
    parts = cut(Z, groups=groups if threshold is None else None, threshold=threshold)
    return enforce_sizes(parts, D, min_size, max_size, method), Z


def random_partition(num_classes: int, sizes: list[int], seed: int) -> list[list[int]]:
    """Classes shuffled with `seed` and dealt into groups of exactly `sizes` (the random control)."""
    if sum(sizes) != num_classes or min(sizes) < 1:
        raise ConfigError(f"random partition sizes {sizes} must be positive and add up to {num_classes}")
    order = np.random.default_rng(seed).permutation(num_classes).tolist()
    groups, start = [], 0
    for size in sizes:
        groups.append(sorted(order[start:start + size]))
        start += size
    return sorted(groups, key=lambda g: g[0])


def oracle_partition(coarse: Optional[list[int]], dataset: str = "") -> list[list[int]]:
    """The data set's own coarse labels as groups (CIFAR-100's 20 superclasses)."""
    if coarse is None:
        raise ConfigError(f"method.partition=oracle needs coarse labels, which data set {dataset!r} does not have: "
                          "use learned or random")
    return _labels_to_groups(np.asarray(coarse))
