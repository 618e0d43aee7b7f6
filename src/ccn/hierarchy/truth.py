"""The data set's own class tree, where it has one: what partitions and mistakes are scored against.

A data set knows its true hierarchy through `coarse` (each class's coarse group: CIFAR-100's
superclasses, Omniglot's alphabets, the group folders of a nested folder, a WordNet cut) and,
for WordNet ids, `tree_paths` (each class's path of node ids from the root down to the class).
Without tree_paths the tree is the two-level one the coarse labels define: root, group, class.

Two scores come from it for every variant, flat included (ours, after "Making Better Mistakes",
Bertinetto et al. 2020):
- coarse top-1: the predicted class lies in the true class's coarse group;
- mistake severity: over the wrong predictions only, the mean height of the lowest common ancestor
  of the true and the predicted class, counted in edges up from the true class (1: a sibling in the
  same coarse group of the two-level tree; 2: another group). On a lopsided tree (WordNet) the
  height is measured from the true class, so it is the number of steps up before the prediction's
  branch is reached.

And for partitions: agreement with the coarse labels (ARI, NMI) beside the same scores for random
partitions of the same sizes, since NMI in particular is far above 0 for random groups when there
are many of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ccn.hierarchy.clustering import random_partition
from ccn.hierarchy.tree import agreement

RANDOM_BASELINE_DRAWS = 20  # random partitions of the same sizes behind each agreement baseline
RANDOM_BASELINE_SEED = 0  # fixed: the same sizes always get the same baseline
ROOT = "root"


@dataclass(frozen=True)
class TrueTree:
    """A data set's true hierarchy: `coarse` per class, and each class's path from the root."""

    coarse: tuple[int, ...]
    paths: tuple[tuple[str, ...], ...]
    source: str  # "coarse labels" or what the paths came from ("wordnet")

    @property
    def num_groups(self) -> int:
        return len(set(self.coarse))

    def lca_heights(self) -> np.ndarray:
        """(C, C) int16: [t, p] = edges from class t up to its lowest common ancestor with class p."""
        return lca_heights(self.paths)


def true_tree(coarse: Optional[list[int]], tree_paths: Optional[list[list[str]]] = None,
              source: str = "wordnet") -> Optional[TrueTree]:
    """The TrueTree of a data set's `coarse` and `tree_paths` fields (None: it has no hierarchy)."""
    if coarse is None:
        return None
    if tree_paths is None:
        paths = tuple((ROOT, f"group {k}", f"class {c}") for c, k in enumerate(coarse))
        return TrueTree(tuple(coarse), paths, "coarse labels")
    return TrueTree(tuple(coarse), tuple(tuple(p) for p in tree_paths), source)


def lca_heights(paths, chunk: int = 256) -> np.ndarray:
    """Heights of the lowest common ancestors for all pairs of classes, computed level by level on
    integer node ids (a Python loop over C^2 pairs takes seconds at 1,623 classes)."""
    depth = max(len(p) for p in paths)
    node_ids: dict[str, int] = {}
    ids = np.full((len(paths), depth), -1, dtype=np.int64)
    for c, path in enumerate(paths):
        ids[c, :len(path)] = [node_ids.setdefault(node, len(node_ids)) for node in path]
    lengths = np.array([len(p) for p in paths], dtype=np.int64)
    heights = np.empty((len(paths), len(paths)), dtype=np.int16)
    for start in range(0, len(paths), chunk):
        same = ids[start:start + chunk, None, :] == ids[None, :, :]
        shared = np.cumprod(same, axis=2).sum(axis=2)  # length of the common prefix, padding included
        rows = lengths[start:start + chunk, None]
        heights[start:start + chunk] = rows - np.minimum(shared, rows)  # a class's padding matches only its own
    return heights


def partition_agreement(groups: list[list[int]], coarse: list[int]) -> dict:
    """ARI and NMI of `groups` against the coarse labels, and the same for random partitions of
    the same sizes (mean and standard deviation over RANDOM_BASELINE_DRAWS draws)."""
    num_classes = len(coarse)
    found = agreement(groups, coarse, num_classes)
    sizes = sorted((len(g) for g in groups), reverse=True)
    draws = [agreement(random_partition(num_classes, sizes, RANDOM_BASELINE_SEED + i), coarse, num_classes)
             for i in range(RANDOM_BASELINE_DRAWS)]
    random = {f"{score}_{stat}": round(float(fn([d[score] for d in draws])), 6)
              for score in ("ari", "nmi") for stat, fn in (("mean", np.mean), ("sd", np.std))}
    return {"coarse_ari": found["ari"], "coarse_nmi": found["nmi"],
            "coarse_random": {**random, "draws": RANDOM_BASELINE_DRAWS}}


def partition_shape(sizes: list[int]) -> dict:
    """What a partition looks like: its largest group's share of the classes, how many groups are
    singletons, and a plain description ("one big group plus singletons" where that is what it is)."""
    sizes = sorted(sizes, reverse=True)
    num_classes = sum(sizes)
    share = sizes[0] / num_classes
    singletons = sum(1 for s in sizes if s == 1)
    others = len(sizes) - 1
    if share >= 0.5 and others > 0 and singletons >= 2 * others / 3:
        rest = "" if singletons == others else f" and {others - singletons} other small group{'s' * (others - singletons > 1)}"
        text = (f"one big group ({sizes[0]} of {num_classes} classes) plus {singletons} "
                f"singleton{'s' * (singletons > 1)}{rest}")
    elif sizes[0] <= 2 * sizes[-1]:
        text = f"balanced: {len(sizes)} groups of {sizes[-1]}-{sizes[0]} classes"
    else:
        text = f"{len(sizes)} groups of {sizes[-1]}-{sizes[0]} classes, {singletons} singleton{'s' * (singletons != 1)}"
    return {"largest_share": round(share, 4), "singletons": singletons, "shape": text}
