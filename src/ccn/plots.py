"""Figures: the dendrogram of the class merges and the class-distance heatmap (PNG, matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ccn.errors import CCNError
from ccn.hierarchy import Hierarchy


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path) -> Path:
    """Write a PNG atomically and close the figure; a full disk or read-only folder is a WriteError."""
    from ccn.files import atomic_write

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        _pyplot().close(fig)
    return path


def _needs_merges(h: Hierarchy) -> None:
    if h.merges is None or h.distances is None:
        raise CCNError("this hierarchy has no merge tree (an oracle partition saved without one?): nothing to plot")


def dendrogram_png(h: Hierarchy, path: Path) -> Path:
    from scipy.cluster.hierarchy import dendrogram

    _needs_merges(h)
    plt = _pyplot()
    height = max(4.0, 0.16 * h.num_classes)
    fig, ax = plt.subplots(figsize=(8, height))
    dendrogram(h.merges, labels=h.classes, orientation="left", ax=ax, leaf_font_size=7,
               color_threshold=_cut_height(h))
    ax.set_xlabel(f"{h.how.get('metric', '')} distance between class profiles ({h.how.get('linkage', '')} linkage)")
    ax.set_title(f"{len(h.groups)} groups, formed after epoch {h.how.get('epoch', '?')}")
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
    """Class distances with classes ordered group by group, so groups show as dark blocks."""
    _needs_merges(h)
    plt = _pyplot()
    order = [c for g in h.groups for c in g]
    D = h.distances[np.ix_(order, order)]
    size = max(5.0, 0.12 * h.num_classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(D, cmap="viridis")
    if h.num_classes <= 120:
        ax.set_xticks(range(len(order)), [h.classes[c] for c in order], rotation=90, fontsize=6)
        ax.set_yticks(range(len(order)), [h.classes[c] for c in order], fontsize=6)
    edges = np.cumsum([len(g) for g in h.groups])[:-1] - 0.5
    for e in edges:
        ax.axhline(e, color="white", linewidth=0.8)
        ax.axvline(e, color="white", linewidth=0.8)
    fig.colorbar(image, ax=ax, label=f"{h.how.get('metric', '')} distance")
    ax.set_title("class distances, ordered by group")
    fig.tight_layout()
    return save_figure(fig, path)
