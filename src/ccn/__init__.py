"""ccn: Clustering and Classification Networks, with the controls that test them.

A finished run from Python (docs/api.md):

    model = ccn.load("runs/my-run")                            # a torch module, in eval mode
    probs = model(["cat.jpg", "dog.png"])                      # (2, C): the run's rule, preprocessing, TTA
    model.classes, model.groups                                # names; the learned groups (None: flat run)
    state = ccn.flat_state_dict("runs/my-run", classifier="fc")  # backbone + flat head for timm / torch

Python API for your own model and loop (see README):

    from ccn import profiles_from_logits, build_hierarchy, ThreeLevelHead
    S = profiles_from_logits(logits, labels, num_classes)      # step 2: class profiles
    h = build_hierarchy(S, class_names, metric="l1")           # groups of close classes
    head = ThreeLevelHead(num_features, h.groups, flat=my_fc)  # step 3: three-level head
    parts = head.loss(head(features), y)                       # {"loss", "cluster", "within", "flat"}

The names below are imported on first use (PEP 562), so `import ccn.errors`, `ccn --help` and a
mistyped argument never load torch or scipy: each `ccn` command imports what it needs itself.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "CCNError": "ccn.errors", "ConfigError": "ccn.errors", "DataError": "ccn.errors",
    "Config": "ccn.config",
    "FlatHead": "ccn.heads", "ThreeLevelHead": "ccn.heads", "TreeHead": "ccn.heads",
    "Hierarchy": "ccn.hierarchy", "agreement": "ccn.hierarchy", "build_hierarchy": "ccn.hierarchy",
    "class_profiles": "ccn.hierarchy", "profiles_from_logits": "ccn.hierarchy",
    "load": "ccn.predictor", "Predictor": "ccn.predictor", "flat_state_dict": "ccn.predictor",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        # a submodule (`from ccn import config`) is found by the import system once this refuses
        raise AttributeError(f"module 'ccn' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # the next look-up does not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from ccn.config import Config
    from ccn.errors import CCNError, ConfigError, DataError
    from ccn.heads import FlatHead, ThreeLevelHead, TreeHead
    from ccn.hierarchy import Hierarchy, agreement, build_hierarchy, class_profiles, profiles_from_logits
    from ccn.predictor import Predictor, flat_state_dict, load
