"""Step 2's choice of partition, as `method.*` says: learned from the profiles (agglomerative or
balanced, on raw or prior-corrected profiles), a control (random groups of the same sizes, the
data set's coarse labels), or a file the user brings."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ccn.config import MethodConfig
from ccn.errors import ConfigError
from ccn.hierarchy.affinity import SPARSE_ABOVE, condensed_distances, default_top_k, prior_corrected
from ccn.hierarchy.clustering import default_group_count, learned_partition, oracle_partition, random_partition
from ccn.hierarchy.groups_file import read_groups_file
from ccn.hierarchy.tree import Hierarchy
from ccn.hierarchy.truth import partition_agreement, partition_shape


def build_hierarchy(profiles: torch.Tensor | np.ndarray, classes: list[str], metric: str = "l1",
                    num_groups: Optional[int] = None, threshold: Optional[float] = None, linkage: str = "average",
                    min_size: Optional[int] = None, max_size: Optional[int] = None,
                    clustering: str = "agglomerative", profile: str = "softmax", sparse_above: int = SPARSE_ABOVE,
                    top_k: Optional[int] = None) -> Hierarchy:
    """Group classes whose profiles are close: the learned partition of the method.

    Profiles on a GPU are compared there (float32 tiles); on the CPU, L1 distances between more than
    `sparse_above` classes use sparse top-k profiles (`top_k`, default: twice the largest group
    expected), since the dense L1 is cubic in the number of classes."""
    S = profiles if isinstance(profiles, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(profiles, dtype=np.float64))
    if profile == "prior":
        S = prior_corrected(S)
    C = len(classes)
    if num_groups is None and threshold is None:  # a caller of the library without a run plan
        num_groups = default_group_count(C)
    if S.device.type != "cpu" and C <= sparse_above:  # small problems: the CPU's float64, as without a GPU
        S = S.cpu()
    sparse = metric == "l1" and S.device.type == "cpu" and C > sparse_above
    kept = (top_k or default_top_k(C, num_groups, max_size)) if sparse else None
    D, computed = condensed_distances(S, metric, top_k=kept)
    del S
    parts, Z = learned_partition(D, num_groups, threshold, linkage, min_size, max_size,
                                 balanced=clustering == "balanced")
    if sparse and top_k is not None:  # the user's top_k: the groups formed must not outgrow it
        _refuse_small_top_k(top_k, max(len(p) for p in parts), C, "the largest group formed has", computed)
    how = {"partition": "learned", "metric": metric, "linkage": linkage, "clustering": clustering,
           "profile": profile, "num_groups": len(parts), **computed}
    return Hierarchy(classes, parts, how, distances=D.astype(np.float32), merges=Z)


def check_top_k(meth: MethodConfig, num_classes: int, num_groups: Optional[int]) -> None:
    """Before training (ccn.plan): a method.top_k set by hand must keep twice the groups the run expects
    whole (the mean size C / `num_groups`, the plan's count; method.max_group_size is checked at load), where the
    sparse profiles apply (L1 above method.sparse_above classes). top_k=2 with 401-class groups dropped
    0.986 of each profile's mass and was only logged. build_hierarchy checks the groups formed again."""
    if meth.name != "ccn" or meth.top_k is None or meth.metric != "l1" or num_classes <= meth.sparse_above:
        return
    if meth.max_group_size is not None or meth.threshold is not None:
        return  # checked at load against max_group_size; with a threshold the groups are known once formed
    _refuse_small_top_k(meth.top_k, -(-num_classes // num_groups), num_classes,
                        f"the mean group of {num_classes} classes in {num_groups} groups has")


def _refuse_small_top_k(top_k: int, largest: int, num_classes: int, what: str, computed: Optional[dict] = None) -> None:
    needed = min(num_classes, 2 * largest)
    if top_k < needed:
        dropped = f" ({computed['dropped_mass']['mean']:.3f} of each profile's mass dropped)" if computed and \
            "dropped_mass" in computed else ""
        raise ConfigError(f"method.top_k={top_k} keeps fewer profile entries than twice the {largest} classes {what}"
                          f"{dropped}: sparse profiles that cannot hold a group split it; set method.top_k to "
                          f"{needed} or more, or leave it unset (twice the largest group expected, at least 256)")


def choose_partition(meth: MethodConfig, profiles: torch.Tensor, classes: list[str], seed: int,
                     coarse: Optional[list[int]] = None, dataset: str = "",
                     class_ids: Optional[list[str]] = None, num_groups: Optional[int] = None) -> Hierarchy:
    """The hierarchy of step 2. The learned partition is always computed (its distances and merge
    tree are kept for plots, and `random` takes its sizes); the controls replace its groups.
    `num_groups`: the run plan's count (default: method.groups, else round(sqrt(C)))."""
    num_groups = num_groups if num_groups is not None else meth.groups
    learned = build_hierarchy(profiles, classes, meth.metric, num_groups, meth.threshold, meth.linkage,
                              meth.min_group_size, meth.max_group_size, meth.clustering, meth.profile,
                              meth.sparse_above, meth.top_k)
    chosen = learned
    if meth.partition != "learned":
        tree = _control_tree(meth, learned, classes, seed, coarse, dataset, class_ids)
        how = {"partition": meth.partition, "num_groups": len(tree), "metric": meth.metric, "linkage": meth.linkage}
        if meth.partition == "file":
            how["groups_file"] = str(meth.groups_file)
        if meth.partition == "random":  # whose sizes it copies
            how["sizes_of"] = ("the data set's coarse labels" if meth.random_sizes == "oracle"
                               else f"{meth.clustering} clustering of {meth.profile} profiles")
        chosen = Hierarchy(classes, tree, how, distances=learned.distances, merges=learned.merges)
    chosen.how.update(partition_sizes(chosen.groups, len(classes)))
    chosen.how.update(partition_shape([len(g) for g in chosen.groups]))
    if coarse is not None:  # how well the groups match the data set's own coarse labels, and random ones
        chosen.how.update(partition_agreement(chosen.groups, coarse))
        chosen.how["coarse"] = list(coarse)
        if meth.partition != "learned":  # the learned groups are computed anyway: how close did they come?
            chosen.how["learned_coarse"] = partition_agreement(learned.groups, coarse)
    return chosen


def _control_tree(meth: MethodConfig, learned: Hierarchy, classes: list[str], seed: int,
                  coarse: Optional[list[int]], dataset: str, class_ids: Optional[list[str]] = None) -> list:
    if meth.partition == "random":  # the learned (or the oracle's) sizes, shuffled classes
        sized_like = oracle_partition(coarse, dataset) if meth.random_sizes == "oracle" else learned.groups
        sizes = sorted((len(g) for g in sized_like), reverse=True)
        return random_partition(len(classes), sizes, seed=seed)
    if meth.partition == "oracle":
        return oracle_partition(coarse, dataset)
    return read_groups_file(meth.groups_file, classes, whole_tree=meth.depth > 1, class_ids=class_ids)


def partition_sizes(groups: list[list[int]], num_classes: int) -> dict:
    """Group sizes and how far they stray from the mean size C/K (1.0 = perfectly balanced)."""
    sizes = sorted((len(g) for g in groups), reverse=True)
    mean = num_classes / len(groups)
    return {"sizes": sizes, "balance": {"largest_over_mean": round(sizes[0] / mean, 4),
                                        "smallest_over_mean": round(sizes[-1] / mean, 4)}}
