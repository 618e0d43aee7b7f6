"""Step 2 of the method: class profiles, class distances, partitions and the Hierarchy object.

    affinity.py    class profiles (mean softmax per class), prior correction, distances
    clustering.py  agglomerative cut, balanced groups, size bounds, random and oracle partitions
    groups_file.py partitions a user brings (hierarchy.json, NBDT node-link graphs)
    partition.py   the partition `method.*` asks for
    tree.py        the Hierarchy (saved as hierarchy.json), masks, agreement between partitions

The names below are imported on first use (PEP 562), as in the package's facade: reading a run's
hierarchy.json (tree.py, truth.py) needs no torch, so a finished grid is reported without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module of this package that defines it
_PUBLIC = {
    "METRICS": "affinity", "class_distances": "affinity", "class_profiles": "affinity",
    "prior_corrected": "affinity", "profiles_from_logits": "affinity",
    "balanced_partition": "clustering", "default_group_count": "clustering", "learned_partition": "clustering",
    "oracle_partition": "clustering", "random_partition": "clustering",
    "read_groups_file": "groups_file",
    "build_hierarchy": "partition", "choose_partition": "partition", "partition_sizes": "partition",
    "Hierarchy": "tree", "agreement": "tree", "leaves": "tree", "partition_labels": "tree",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        # a submodule (`from ccn.hierarchy import profiles`) is found by the import system once this refuses
        raise AttributeError(f"module 'ccn.hierarchy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ccn.hierarchy.{_PUBLIC[name]}"), name)
    globals()[name] = value  # the next look-up does not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from ccn.hierarchy.affinity import (METRICS, class_distances, class_profiles, prior_corrected,
                                        profiles_from_logits)
    from ccn.hierarchy.clustering import (balanced_partition, default_group_count, learned_partition,
                                          oracle_partition, random_partition)
    from ccn.hierarchy.groups_file import read_groups_file
    from ccn.hierarchy.partition import build_hierarchy, choose_partition, partition_sizes
    from ccn.hierarchy.tree import Hierarchy, agreement, leaves, partition_labels
