"""Figures: the dendrogram of the class merges and the class-distance heatmap (PNG, matplotlib Agg).

Both stay readable at thousands of classes: above DENDROGRAM_LEAVES classes the dendrogram shows
only its last merges (each leaf a cluster, labelled with its class count), and above HEATMAP_CLASSES
the heat map shows an evenly spaced sample of the classes in group order (so every group keeps its
share of rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ccn.errors import CCNError
from ccn.hierarchy import Hierarchy
from ccn.hierarchy.clustering import distance_block

DENDROGRAM_LEAVES = 120  # more classes: the dendrogram is truncated to its last merges
HEATMAP_CLASSES = 500  # more classes: the heat map shows this many, sampled evenly in group order


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path) -> Path:
    """Write a PNG atomically and close the figure; a full disk or read-only folder is a WriteError."""
    from ccn.files import atomic_write, check_replaceable

    try:
        check_replaceable(path, "figure", "remove it, and ccn writes the figure there")
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        _pyplot().close(fig)
    return path


def _needs_merges(h: Hierarchy) -> None:
    if h.merges is None:
        raise CCNError("this hierarchy has no merge tree (an oracle partition saved without one?): nothing to plot")


def dendrogram_png(h: Hierarchy, path: Path) -> Path:
    from scipy.cluster.hierarchy import dendrogram

    _needs_merges(h)
    plt = _pyplot()
    truncated = h.num_classes > DENDROGRAM_LEAVES
    leaves = DENDROGRAM_LEAVES if truncated else h.num_classes
    fig, ax = plt.subplots(figsize=(8, max(4.0, 0.16 * leaves)))
    shown = dict(truncate_mode="lastp", p=DENDROGRAM_LEAVES, show_leaf_counts=True) if truncated else \
        dict(labels=h.classes)
    dendrogram(h.merges, orientation="left", ax=ax, leaf_font_size=7, color_threshold=_cut_height(h), **shown)
    ax.set_xlabel(f"{h.how.get('metric', '')} distance between class profiles ({h.how.get('linkage', '')} linkage)")
    ax.set_title(f"{len(h.groups)} groups, formed after epoch {h.how.get('epoch', '?')}" +
                 (f"\nlast {DENDROGRAM_LEAVES} clusters of {h.num_classes} classes (class counts)" if truncated else ""))
    fig.tight_layout()
    return save_figure(fig, path)


def _cut_height(h: Hierarchy) -> float:
    """A height between the last merge inside groups and the first merge between them (colours the groups)."""
    k = len(h.groups)
    heights = np.sort(h.merges[:, 2])  # the last k - 1 merges join groups; the one before is inside a group
    if k <= 1:
        return float(heights[-1]) + 1e-9
    if k > len(heights):
        return 0.0
    return float(heights[-k] + heights[-k + 1]) / 2


def heatmap_png(h: Hierarchy, path: Path) -> Path:
    """Class distances with classes ordered group by group, so groups show as dark blocks (`h` must
    hold its distances: Hierarchy.with_distances)."""
    if h.distances is None:
        raise CCNError("this hierarchy holds no class distances: nothing to plot")
    plt = _pyplot()
    order = np.array([c for g in h.groups for c in g])
    sizes = np.array([len(g) for g in h.groups])
    shown = np.arange(len(order))
    if len(order) > HEATMAP_CLASSES:  # an even sample in group order keeps each group's share of rows
        shown = np.unique(np.linspace(0, len(order) - 1, HEATMAP_CLASSES).round().astype(int))
    D = distance_block(h.distances, order[shown], order[shown])
    size = max(5.0, 0.12 * min(h.num_classes, HEATMAP_CLASSES / 4))
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(D, cmap="viridis", interpolation="nearest")
    if h.num_classes <= 120:
        ax.set_xticks(range(len(order)), [h.classes[c] for c in order], rotation=90, fontsize=6)
        ax.set_yticks(range(len(order)), [h.classes[c] for c in order], fontsize=6)
    edges = np.searchsorted(shown, np.cumsum(sizes)[:-1]) - 0.5  # group boundaries among the shown rows
    if len(edges) > 60:  # a line per group would hide the blocks
        edges = []
    for e in edges:
        ax.axhline(e, color="white", linewidth=0.8)
        ax.axvline(e, color="white", linewidth=0.8)
    fig.colorbar(image, ax=ax, label=f"{h.how.get('metric', '')} distance")
    ax.set_title("class distances, ordered by group" +
                 (f"\n{len(shown)} of {h.num_classes} classes, evenly spaced in group order" if len(shown) < len(order) else ""))
    fig.tight_layout()
    return save_figure(fig, path)
