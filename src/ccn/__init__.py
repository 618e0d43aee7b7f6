"""ccn: Clustering and Classification Networks, with the controls that test them.

Python API for your own model and loop (see README):

    from ccn import profiles_from_logits, build_hierarchy, ThreeLevelHead
    S = profiles_from_logits(logits, labels, num_classes)      # step 2: class profiles
    h = build_hierarchy(S, class_names, metric="l1")           # groups of close classes
    head = ThreeLevelHead(num_features, h.groups, flat=my_fc)  # step 3: three-level head
    parts = head.loss(head(features), y)                       # {"loss", "cluster", "within", "flat"}
"""

from ccn.config import Config
from ccn.errors import CCNError, ConfigError, DataError
from ccn.heads import FlatHead, ThreeLevelHead, TreeHead
from ccn.hierarchy import Hierarchy, agreement, build_hierarchy, class_profiles, profiles_from_logits

__version__ = "0.1.0"

__all__ = ["CCNError", "Config", "ConfigError", "DataError", "FlatHead", "Hierarchy", "ThreeLevelHead", "TreeHead",
           "agreement", "build_hierarchy", "class_profiles", "profiles_from_logits"]
