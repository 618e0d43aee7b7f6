"""The network of a run: a backbone plus the head its stage calls for.

Training builds it here, and so does loading a saved run (runs.py), so a run folder always
rebuilds the network that wrote it:

    no hierarchy      FlatHead         (the baseline, and the probe epochs of the method)
    depth-1 groups    ThreeLevelHead   (step 3)
    a deeper tree     TreeHead         (the recursion)
"""

from __future__ import annotations

from typing import Optional

import torch

from ccn.config import MethodConfig, ModelConfig, TrainConfig
from ccn.heads import FlatHead, ThreeLevelHead, TreeHead, flatten_tree
from ccn.hierarchy import Hierarchy
from ccn.models import Classifier, backbone_from_config
from ccn.models.base import configure_batchnorm


def make_head(meth: MethodConfig, in_features: int, num_classes: int, hierarchy: Optional[Hierarchy],
              flat: Optional[torch.nn.Linear] = None) -> torch.nn.Module:
    """FlatHead without a hierarchy, ThreeLevelHead for depth 1, TreeHead deeper; `meth` (the
    config's method section) weighs their losses."""
    if hierarchy is None:
        return FlatHead(in_features, num_classes)
    if hierarchy.depth == 1:
        return ThreeLevelHead(in_features, hierarchy.groups, flat=flat, flat_weight=meth.flat_weight,
                              blend_weight=meth.blend_weight, init_from_flat=meth.init_from_flat,
                              normalize_loss=meth.normalize_loss)
    return TreeHead(in_features, hierarchy.tree, num_classes, flat=flat, flat_weight=meth.flat_weight,
                    blend_weight=meth.blend_weight, normalize_loss=meth.normalize_loss)


def build_model(model: ModelConfig, train: TrainConfig, num_classes: int, hierarchy: Optional[Hierarchy] = None,
                meth: Optional[MethodConfig] = None) -> Classifier:
    """The network of a run (`model`: the config's model section; `train`: its BatchNorm keys), with
    the flat head, or with the head of `hierarchy` weighed by `meth`: used to train a run and to
    rebuild it from its run folder."""
    if hierarchy is not None and meth is None:
        raise ValueError("build_model: the head of a hierarchy needs the method section (meth) that weighs its losses")
    backbone = backbone_from_config(model)
    # BatchNorm's eps changes what the net computes, so a rebuilt run needs it too
    configure_batchnorm(backbone, train.bn_eps, train.bn_momentum, train_weight=train.bn_weight)
    head = make_head(meth, backbone.num_features, num_classes, hierarchy)
    return Classifier(backbone, head, model.dropout)


def tree_head_from(three: ThreeLevelHead, tree: list, meth: MethodConfig) -> TreeHead:
    """A TreeHead that starts where the three-level head is: group nodes from `u`, classes from `v`,
    the new sub-group nodes at zero (a uniform split)."""
    num_classes = three.mask.shape[1]
    head = TreeHead(three.flat.in_features, tree, num_classes, flat=three.flat,
                    flat_weight=meth.flat_weight, blend_weight=meth.blend_weight, normalize_loss=meth.normalize_loss)
    parent, leaf_class = flatten_tree(tree)
    top_nodes = [n for n in range(1, len(parent)) if parent[n] == 0]
    with torch.no_grad():
        head.nodes.weight.zero_()
        head.nodes.bias.zero_()
        for k, node in enumerate(top_nodes):
            head.nodes.weight[node - 1] = three.cluster.weight[k]
            head.nodes.bias[node - 1] = three.cluster.bias[k]
        for node, c in leaf_class.items():
            head.nodes.weight[node - 1] = three.masked.weight[c]
            head.nodes.bias[node - 1] = three.masked.bias[c]
    return head.to(three.mask.device)
