"""Partitions of the classes: learned (agglomerative on class distances), random, oracle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
from scipy.cluster.hierarchy import cut_tree, fcluster, linkage
from scipy.spatial.distance import squareform

from ccn.errors import ConfigError

if TYPE_CHECKING:
    import torch


def default_group_count(num_classes: int) -> int:
    """Ours: round(sqrt(C)) groups (10 for CIFAR-100), at least 2 when there are 4+ classes."""
    return max(1, min(num_classes, int(round(num_classes ** 0.5))))


# Distances D are condensed (C(C-1)/2 entries, scipy's layout) or, for small problems and tests, square.

def class_count(D: np.ndarray) -> int:
    return len(D) if D.ndim == 2 else int(round((1 + (1 + 8 * len(D)) ** 0.5) / 2))


def condensed(D: np.ndarray) -> np.ndarray:
    """Condensed float64 distances (what scipy's linkage works on) from either form."""
    return np.asarray(squareform(D, checks=False) if D.ndim == 2 else D, dtype=np.float64)


def condensed_index(C: int, i: np.ndarray | torch.Tensor, j: np.ndarray | torch.Tensor):
    """Position of the pair (i, j), i < j, in a condensed vector of C classes (numpy or torch indices)."""
    return C * i - i * (i + 1) // 2 + (j - i - 1)


def distance_block(D: np.ndarray, rows, cols) -> np.ndarray:
    """The (len(rows), len(cols)) block of the square distance matrix, read from either form."""
    if D.ndim == 2:
        return D[np.ix_(rows, cols)]
    i, j = np.asarray(rows, dtype=np.int64)[:, None], np.asarray(cols, dtype=np.int64)[None, :]
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    block = D[condensed_index(class_count(D), lo, hi).clip(min=0)]
    return np.where(lo == hi, 0.0, block)


def merge_tree(D: np.ndarray, method: str = "average") -> np.ndarray:
    """scipy linkage matrix ((C - 1) x 4) of agglomerative clustering on the distances D."""
    return linkage(condensed(D), method=method)


def _labels_to_groups(labels: np.ndarray) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for c, k in enumerate(labels.tolist()):
        groups.setdefault(k, []).append(c)
    return sorted(groups.values(), key=lambda g: g[0])


def cut(Z: np.ndarray, num_groups: Optional[int] = None, threshold: Optional[float] = None) -> list[list[int]]:
    """Cut a merge tree into exactly `num_groups` groups, or at a distance `threshold`."""
    num_classes = Z.shape[0] + 1
    if threshold is not None:
        return _labels_to_groups(fcluster(Z, t=threshold, criterion="distance"))
    if num_groups is None or not 1 <= num_groups <= num_classes:  # a run's count is checked by ccn.plan
        raise ValueError(f"num_groups={num_groups} is impossible with {num_classes} classes: "
                         f"choose between 1 and {num_classes}")
    return _labels_to_groups(cut_tree(Z, n_clusters=num_groups).flatten())


def _mean_distance(D: np.ndarray, a: list[int], b: list[int]) -> float:
    return float(distance_block(D, a, b).mean())


def enforce_sizes(groups: list[list[int]], D: np.ndarray, min_size: Optional[int],
                  max_size: Optional[int], method: str = "average") -> list[list[int]]:
    """Split groups above `max_size` along their own merge tree; merge groups below `min_size`
    into the group at the smallest mean distance that stays within `max_size` (ours)."""
    groups = [sorted(g) for g in groups]
    if max_size is not None:
        done: list[list[int]] = []
        while groups:
            g = groups.pop()
            if len(g) <= max_size:
                done.append(g)
                continue
            sub = cut(merge_tree(distance_block(D, g, g), method), num_groups=2)
            groups += [[g[i] for i in part] for part in sub]
        groups = done
    if min_size is not None:
        while len(groups) > 1:
            small = min(groups, key=len)
            if len(small) >= min_size:
                break
            groups.remove(small)
            room = [g for g in groups if max_size is None or len(g) + len(small) <= max_size]
            if not room:
                raise ConfigError(f"method.min_group_size={min_size} and method.max_group_size={max_size} cannot both "
                                  f"hold for {class_count(D)} classes in these groups: widen the range between them")
            nearest = min(room, key=lambda other: _mean_distance(D, small, other))
            nearest += small
            nearest.sort()
    return sorted(groups, key=lambda g: g[0])


def balanced_sizes(num_classes: int, num_groups: int) -> list[int]:
    """K sizes that differ by at most one and add up to C, largest first."""
    return [num_classes // num_groups + (1 if k < num_classes % num_groups else 0) for k in range(num_groups)]


def balanced_partition(D: np.ndarray, num_groups: int, start: list[list[int]], max_rounds: int = 50) -> list[list[int]]:
    """K groups of floor(C/K) or ceil(C/K) classes that keep close classes together (ours).

    Start from `start` (the agglomerative cut into K groups), then repeat: the cost of putting
    class c in group k is its mean distance to k's current members; give every class one seat of
    the K fixed-size groups so that the total cost is smallest (an assignment problem); then swap
    pairs of classes between groups while a swap lowers the sum of within-group distances; stop when
    nothing moves. The assignment step alone can stop in a poor fixed point whose outcome hangs on
    how the solver breaks ties between equal seats (scipy 1.16 and 1.17 differ); the swaps do not.
    Every group lies within a factor 2 of C/K by construction (within one class). It needs the
    square matrix and solves C x C assignment problems: meant for up to a few thousand classes."""
    from scipy.optimize import linear_sum_assignment

    D = D if D.ndim == 2 else squareform(D)
    num_classes = len(D)
    labels = np.empty(num_classes, dtype=int)
    for k, members in enumerate(sorted(start, key=len, reverse=True)):  # larger groups get the larger seats
        labels[members] = k
    seats = np.repeat(np.arange(num_groups), balanced_sizes(num_classes, num_groups))
    for _ in range(max_rounds):
        member = np.eye(num_groups)[labels]  # (C, K) one-hot
        counts = member.sum(0)[None, :] - member  # members of each group other than c itself
        cost = (D @ member) / np.maximum(counts, 1)
        _, seat = linear_sum_assignment(cost[:, seats])
        new = _improve_by_swaps(D, seats[seat], num_groups)
        if np.array_equal(new, labels):
            break
        labels = new
    return _labels_to_groups(labels)


def _improve_by_swaps(D: np.ndarray, labels: np.ndarray, num_groups: int, max_swaps: int = 10_000) -> np.ndarray:
    """Swap the pair of classes (in different groups) that lowers the sum of within-group distances
    most, until no swap lowers it; group sizes do not change.

    With S[i, k] = sum of D[i, m] over the members m of group k, swapping i (in A) and j (in B)
    changes the sum by S[j, A] - S[i, A] + S[i, B] - S[j, B] - 2 D[i, j]."""
    labels = labels.copy()
    for _ in range(max_swaps):
        S = D @ np.eye(num_groups)[labels]
        own = S[np.arange(len(labels)), labels]
        cross = S[:, labels]  # cross[j, i] = S[j, group of i]
        gain = cross + cross.T - own[:, None] - own[None, :] - 2 * D
        gain[labels[:, None] == labels[None, :]] = 0.0
        i, j = np.unravel_index(np.argmin(gain), gain.shape)
        if gain[i, j] >= -1e-12 * max(1.0, float(np.abs(D).max())):
            break
        labels[i], labels[j] = labels[j], labels[i]
    return labels


def learned_partition(D: np.ndarray, num_groups: Optional[int] = None, threshold: Optional[float] = None,
                      method: str = "average", min_size: Optional[int] = None,
                      max_size: Optional[int] = None, balanced: bool = False) -> tuple[list[list[int]], np.ndarray]:
    """Agglomerative clustering of the classes on D: (groups, merge tree). With `balanced`, the cut
    into K groups is rebalanced into groups of equal size (see balanced_partition)."""
    Z = merge_tree(D, method)
    parts = cut(Z, num_groups=num_groups if threshold is None else None, threshold=threshold)
    if balanced:
        return balanced_partition(D, len(parts), parts), Z
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
    if coarse is None:  # a run's plan refused this before training (ccn.plan)
        raise ConfigError(oracle_refusal(dataset))
    return _labels_to_groups(np.asarray(coarse))


def oracle_refusal(dataset: str) -> str:
    return (f"method.partition=oracle needs coarse labels, which data set {dataset!r} does not have: "
            "use learned or random")
