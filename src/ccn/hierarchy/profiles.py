"""Class profiles from a network's outputs, summed batch by batch on the training device and over
ranks, and the partitions of step 2 and of the recursion made from them.

The network is not called here: callers pass the batches of outputs (`ccn.evaluate.batch_outputs`),
so this stage of the method does not depend on the later ones."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

from ccn.config import MethodConfig
from ccn.data import ImageDataset
from ccn.dist import all_reduce_sum
from ccn.hierarchy.affinity import class_profile_sums, profiles_from_sums
from ccn.hierarchy.clustering import default_group_count, random_partition
from ccn.hierarchy.partition import build_hierarchy, choose_partition
from ccn.hierarchy.tree import Hierarchy

class ProfileSums:
    """Class-profile sums and counts, added up batch by batch on the training device."""

    def __init__(self):
        self.sums = self.counts = None

    def add(self, probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        sums, counts = class_profile_sums(probs, labels, num_classes)
        self.sums = sums if self.sums is None else self.sums + sums
        self.counts = counts if self.counts is None else self.counts + counts

    def profiles(self) -> torch.Tensor:
        """The mean rows, summed over all ranks on the device (NCCL reduces only CUDA tensors); they
        stay there, so that step 2 can compare thousands of classes on a GPU (build_hierarchy)."""
        return profiles_from_sums(all_reduce_sum(self.sums), all_reduce_sum(self.counts))


@torch.no_grad()
def flat_profiles(outputs: Iterable[tuple[dict, torch.Tensor]], num_classes: int) -> torch.Tensor:
    """Mean softmax of the level-1 (flat) head per class, from (head outputs, labels) batches taken
    in eval mode without augmentation."""
    tally = ProfileSums()
    for out, labels in outputs:
        tally.add(torch.softmax(out["z"].double(), dim=1), labels, num_classes)
    return tally.profiles()


def form_groups(meth: MethodConfig, seed: int, profiles: torch.Tensor, ds: ImageDataset, epoch: int,
                num_groups: Optional[int] = None) -> Hierarchy:
    """The partition of step 2 (learned, or a control, as the method section `meth` says), with when
    and from what it was made; `num_groups` is the run plan's count (None: a threshold decides)."""
    hierarchy = choose_partition(meth, profiles, ds.classes, seed, ds.coarse, ds.name, ds.class_ids, num_groups)
    hierarchy.how.update(epoch=epoch, probe_set=meth.probe_set)
    return hierarchy


def large_group_profiles(within: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                         large: list) -> list:
    """Per group in `large`: the class profiles of the masked (level-3) softmax restricted to the group,
    from (log p(class | group, x), labels) batches."""
    if not large:
        return []
    tallies = [ProfileSums() for _ in large]
    local_index = None  # per large group: class -> its position inside the group (-1: another group)
    for log_within, labels in within:
        if local_index is None:
            local_index = [_positions(members, num_classes, labels.device) for members in large]
        for members, index, tally in zip(large, local_index, tallies):
            local = index[labels]
            rows = local >= 0
            tally.add(log_within[rows][:, members].exp(), local[rows], len(members))
    return [tally.profiles() for tally in tallies]


def _positions(members: list, num_classes: int, device: torch.device) -> torch.Tensor:
    index = torch.full((num_classes,), -1, dtype=torch.long, device=device)
    index[torch.tensor(members, device=device)] = torch.arange(len(members), device=device)
    return index


@torch.no_grad()
def split_large_groups(meth: MethodConfig, seed: int, within: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                       hierarchy: Hierarchy, epoch: int) -> Hierarchy:
    """Recursion: inside each group of >= split_min_size classes, profile the classes with the masked
    (level-3) softmax restricted to the group and cluster them again into round(sqrt(size)) parts.

    Under partition=random the sub-groups are random too (the sizes the learned split gives, shuffled
    classes), so the control stays random at every level. When no group is large enough, the
    hierarchy stays at depth 1 and says so (`how["split"]`). The profiles are summed batch by batch
    on the device (never the whole probe set's (N, C) outputs) and over ranks. `within()` yields the
    probe set's (log p(class | group, x), labels) batches; it is called only when a group is large."""
    large = [members for members in hierarchy.groups if len(members) >= meth.split_min_size]
    profiles = large_group_profiles(within() if large else (), hierarchy.num_classes, large)
    tree, split = [], 0
    for k, members in enumerate(hierarchy.groups):
        if len(members) < meth.split_min_size:
            tree.append(members)
            continue
        S = profiles[split]
        parts = build_hierarchy(S, [str(c) for c in members], meth.metric, max(2, default_group_count(len(members))),
                                linkage=meth.linkage, clustering=meth.clustering, profile=meth.profile,
                                sparse_above=meth.sparse_above, top_k=meth.top_k).groups
        if meth.partition == "random":
            parts = random_partition(len(members), sorted(map(len, parts), reverse=True), seed=seed + 1 + k)
        tree.append([[members[i] for i in part] for part in parts])
        split += 1
    if split == 0:
        return Hierarchy(hierarchy.classes, hierarchy.tree,
                         {**hierarchy.how, "split": f"none: no group has {meth.split_min_size} or more classes"},
                         hierarchy.distances, hierarchy.merges)
    how = {**hierarchy.how, "depth": 2, "split_epoch": epoch, "split": f"{split} group(s)"}
    return Hierarchy(hierarchy.classes, tree, how, hierarchy.distances, hierarchy.merges)
