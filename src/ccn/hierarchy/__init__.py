"""Step 2 of the method: class profiles, class distances, partitions and the Hierarchy object.

    affinity.py    class profiles (mean softmax per class), prior correction, distances
    clustering.py  agglomerative cut, balanced groups, size bounds, random and oracle partitions
    groups_file.py partitions a user brings (hierarchy.json, NBDT node-link graphs)
    partition.py   the partition `method.*` asks for
    tree.py        the Hierarchy (saved as hierarchy.json), masks, agreement between partitions
"""

from ccn.hierarchy.affinity import (METRICS, class_distances, class_profiles, prior_corrected,
                                    profiles_from_logits)
from ccn.hierarchy.clustering import (balanced_partition, default_group_count, learned_partition, oracle_partition,
                                      random_partition)
from ccn.hierarchy.groups_file import read_groups_file
from ccn.hierarchy.partition import build_hierarchy, choose_partition, partition_sizes
from ccn.hierarchy.tree import Hierarchy, agreement, leaves, partition_labels

__all__ = ["METRICS", "Hierarchy", "agreement", "balanced_partition", "build_hierarchy", "choose_partition",
           "class_distances", "class_profiles", "default_group_count", "leaves", "learned_partition",
           "oracle_partition", "partition_labels", "partition_sizes", "prior_corrected", "profiles_from_logits",
           "random_partition", "read_groups_file"]
