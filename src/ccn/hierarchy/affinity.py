"""Class profiles and distances between classes (step 2 of the method).

A class profile is the mean softmax of the images of that class: row c of S says where the
model sends images of class c. Classes with close rows are confused in the same way.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from scipy.spatial.distance import pdist, squareform
from torch.nn import functional as F

from ccn.errors import DataError
from ccn.hierarchy.clustering import condensed_index

def class_profile_sums(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, C) sums of `probs` (N, C) per label, and (C,) counts: the parts that ranks add up. They stay
    on the device of `probs` (an NCCL process group reduces only CUDA tensors), in float64 (float32 on
    MPS, which has no float64)."""
    dtype = torch.float32 if probs.device.type == "mps" else torch.float64
    probs, labels = probs.detach().to(dtype), labels.to(probs.device)
    sums = torch.zeros(num_classes, probs.shape[1], dtype=dtype, device=probs.device).index_add_(0, labels, probs)
    return sums, torch.bincount(labels, minlength=num_classes).to(dtype)


def profiles_from_sums(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean rows; DataError if some class has no sample, since its profile would be undefined."""
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise DataError(f"the probe set has no image of classes {missing[:10]}: class profiles need every class; "
                        "use method.probe_set=train or a larger method.holdout_fraction")
    return sums / counts[:, None]


def class_profiles(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) float64: row c is the mean of `probs` (N, C) over the samples labelled c."""
    return profiles_from_sums(*class_profile_sums(probs, labels, num_classes))


def profiles_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return class_profiles(torch.softmax(logits.double(), dim=1), labels, num_classes)


def prior_corrected(S: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Profiles with the prior of the predictions divided out (ours; docs/method.md).

    After one epoch the network predicts a few classes far more often than the rest (on
    Caltech-101: airplanes, Motorbikes, Faces, Leopards), and that mass sits in every row of S, so
    all rows look alike along those columns. With the class-balanced prior of the predictions
    pi_j = (1/C) sum_c S[c, j], the corrected row is

        S'[c, j] = (S[c, j] / pi_j) / sum_j' (S[c, j'] / pi_j'),

    which keeps where class c is sent *relative to how often any class is sent there*. The result
    stays on S's device; one C x C temporary."""
    S = torch.as_tensor(S)
    ratio = S / S.mean(dim=0).clamp_min(1e-12)[None, :]
    return ratio.div_(ratio.sum(dim=1, keepdim=True))


# ---------------------------------------------------------------- distances between class profiles
#
# Distances are kept condensed (scipy's layout: the C(C-1)/2 entries above the diagonal, row by row),
# never as a C x C x C temporary. On the CPU the L1/L2/cosine distances come from scipy's pdist (4x
# faster than torch.cdist for L1); the js metric and profiles on a GPU go through `tiled_condensed`,
# which computes row blocks of the square matrix with a metric's tile function in float32 (the groups
# are the same as in float64: tests/test_scale.py). Above `SPARSE_ABOVE` classes the L1 distance is
# taken between sparse top-k profiles (`sparse_l1_condensed`), since the dense L1 is cubic in C.

SPARSE_ABOVE = 3000  # ours: dense L1 takes ~10 s at 2,000 classes on 2 cores and grows as C^3
TILE_BYTES = 64 << 20  # the largest temporary one tile may allocate


def _l1_tile(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, p=1)


def _l2_tile(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, p=2)


def _cosine_tile(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (1 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).clamp_min(0)


def _js_tile(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (natural log, in [0, log 2]) between rows taken as distributions;
    the (len(a), len(b), C) mixture is the tile's temporary, so callers keep len(a) * len(b) small."""
    a, b = _distribution(a), _distribution(b)
    m = (a[:, None, :] + b[None, :, :]) / 2
    cross = (m * m.log()).sum(2)
    return ((_plogp(a)[:, None] + _plogp(b)[None, :]) / 2 - cross).clamp_min(0)


def _distribution(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp_min(1e-12)
    return p / p.sum(1, keepdim=True)


def _plogp(p: torch.Tensor) -> torch.Tensor:
    return (p * p.log()).sum(1)


# name -> (tile function, scipy pdist metric for the CPU or None, whether a tile allocates rows x rows x C)
METRICS: dict[str, tuple[Callable, Optional[str], bool]] = {
    "l1": (_l1_tile, "cityblock", False),  # the paper's metric
    "l2": (_l2_tile, "euclidean", False),
    "cosine": (_cosine_tile, "cosine", False),
    "js": (_js_tile, None, True),
    "confusion": (None, None, False),  # 1 - symmetric confusion, from S itself (HD-CNN's idea, ours)
}


def row_offsets(C: int) -> np.ndarray:
    """Where each row's entries (i, i+1..C-1) start in the condensed vector."""
    i = np.arange(C, dtype=np.int64)
    return condensed_index(C, i, i + 1)


def tiled_condensed(S: torch.Tensor, tile: Callable, cubic: bool = False, tile_bytes: int = TILE_BYTES) -> np.ndarray:
    """Condensed float32 distances from row blocks of S against the rows after them; the same code runs
    on the CPU and on a GPU (the tiles stay on S's device, each block comes back to the host)."""
    C = len(S)
    out = np.empty(C * (C - 1) // 2, dtype=np.float32)
    starts = row_offsets(C)
    per_row = C * 4 * (C if cubic else 1)  # bytes one row of a tile needs
    rows = max(1, min(C, tile_bytes // per_row))
    cols = C if not cubic else max(1, min(C, tile_bytes // (4 * C)))
    for i0 in range(0, C - 1, rows):
        i1 = min(C, i0 + rows)
        block = torch.cat([tile(S[i0:i1], S[j0:j0 + cols]) for j0 in range(i0, C, cols)], dim=1).float().cpu().numpy()
        for i in range(i0, min(i1, C - 1)):  # row i keeps the classes after it
            out[starts[i]:starts[i] + C - i - 1] = block[i - i0, i - i0 + 1:]
    return out


def confusion_condensed(S: np.ndarray) -> np.ndarray:
    """1 - symmetric confusion (S[c, d] + S[d, c]) / 2, scaled by its largest value: classes that
    take each other's mass are close (ours)."""
    C = len(S)
    i, j = np.triu_indices(C, 1)
    shared = (S[i, j] + S[j, i]) / 2
    top = shared.max() if len(shared) else 0.0
    return (1 - shared / top if top > 0 else np.ones_like(shared)).astype(np.float32)


def sparse_l1_condensed(S: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Condensed float64 L1 distances between the top-k profiles, and the mass each row dropped.

    Each row keeps its k largest entries plus one exact "rest" coordinate holding the mass it
    dropped, so |a|_1 stays the row's sum. For non-negative rows
        |a - b|_1 = |a|_1 + |b|_1 - 2 sum_j min(a_j, b_j),
    and min(a_j, b_j) > 0 only where both rows kept column j, so the overlap is summed over the
    pairs of rows that kept the same column (about C k^2 / 2 pairs instead of the C^3 / 2 terms of
    the dense distance). Columns that most rows kept, and the rest coordinate, are added densely.
    With k >= C this is the exact L1 distance."""
    C = len(S)
    S = torch.as_tensor(S).detach().to("cpu", torch.float32)  # the host holds the condensed result
    k = min(k, C)
    vals, cols = S.topk(k, dim=1)
    rest = (S.sum(1) - vals.sum(1)).clamp_min(0)
    total = (vals.sum(1) + rest).double().numpy()
    col_of, order = cols.flatten().sort(stable=True)  # stable: rows ascend inside each column
    row_of = torch.arange(C).repeat_interleave(k)[order]
    val_of = vals.flatten()[order]
    counts = torch.bincount(col_of, minlength=C)
    dense_cols = (counts > max(64, C // 5)).nonzero().flatten()  # cheaper as whole rows than as pairs
    sparse = ~torch.isin(col_of, dense_cols)
    overlap = _pair_overlaps(C, row_of[sparse], val_of[sparse], col_of[sparse])
    dense = torch.zeros(C, len(dense_cols) + 1)  # + the rest coordinate
    for n, c in enumerate(dense_cols.tolist()):
        where = col_of == c
        dense[row_of[where], n] = val_of[where]
    dense[:, -1] = rest
    D = overlap.double().numpy()
    starts = row_offsets(C)
    for i in range(C - 1):
        seg = slice(starts[i], starts[i] + C - i - 1)
        shared = D[seg] + torch.minimum(dense[i], dense[i + 1:]).sum(1).double().numpy()
        D[seg] = (total[i] + total[i + 1:] - 2 * shared).clip(min=0)
    return D, rest.double().numpy()


def _pair_overlaps(C: int, rows: torch.Tensor, vals: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Condensed float32 sum of min(v_a, v_b) over the entries a, b of the same column.

    Entries come sorted by column, rows ascending inside a column. Columns of similar length are laid
    out as the rows of one padded (columns, length) array (padding: value 0, which adds nothing), so
    the pairs d places apart are two slices of it: one vectorised step per offset d and bucket,
    without gathers (torch's indexing costs more than the arithmetic here)."""
    overlap = torch.zeros(C * (C - 1) // 2)
    if len(cols) == 0:
        return overlap
    col_ids, seg_len = torch.unique_consecutive(cols, return_counts=True)
    pos = torch.arange(len(cols)) - (torch.cumsum(seg_len, 0) - seg_len).repeat_interleave(seg_len)
    base = torch.as_tensor(row_offsets(C))[rows] - rows - 1  # condensed position of (rows[e], j) is base[e] + j
    width = _bucket_widths(seg_len)
    col_width = width.repeat_interleave(seg_len)
    for w in width.unique().tolist():
        in_bucket = col_width == w
        which = (width[:len(seg_len)] == w).cumsum(0).repeat_interleave(seg_len)[in_bucket] - 1  # column's row
        shape = (int(which.max()) + 1, w)
        R = torch.full(shape, C - 1, dtype=torch.long)  # padding pairs land on valid positions with value 0
        B = torch.zeros(shape, dtype=torch.long)
        V = torch.zeros(shape)
        at = (which, pos[in_bucket])
        R[at], B[at], V[at] = rows[in_bucket], base[in_bucket], vals[in_bucket]
        for d in range(1, w):
            overlap.index_add_(0, (B[:, :w - d] + R[:, d:]).flatten(), torch.minimum(V[:, :w - d], V[:, d:]).flatten())
    return overlap


def _bucket_widths(lengths: torch.Tensor) -> torch.Tensor:
    """Padded length per column: the next of 8, 10, 12, 16, 20, ... (x1.25), so padding adds at most
    a quarter and the buckets are few."""
    ladder = torch.tensor(sorted({int(8 * 1.25 ** i) for i in range(60) if 8 * 1.25 ** i < 4 * int(lengths.max()) + 8}))
    return ladder[torch.searchsorted(ladder, lengths)]


def default_top_k(num_classes: int, num_groups: Optional[int], max_size: Optional[int] = None) -> int:
    """Ours: twice the largest group expected (max_group_size, else twice the mean size C/K), at least 256."""
    largest = max_size if max_size is not None else 2 * -(-num_classes // max(1, num_groups or 1))
    return min(num_classes, max(256, 2 * largest))


def condensed_distances(S, metric: str = "l1", top_k: Optional[int] = None) -> tuple[np.ndarray, dict]:
    """Condensed distances between the rows of S, and how they were computed (for hierarchy.how).

    `top_k` (L1 only) switches to sparse top-k profiles; profiles on a GPU are tiled there."""
    from ccn.errors import ConfigError

    if metric not in METRICS:
        raise ConfigError(f"method.metric={metric!r} is not known; choose one of: {', '.join(METRICS)}")
    tile, scipy_name, cubic = METRICS[metric]
    on_gpu = isinstance(S, torch.Tensor) and S.device.type != "cpu"
    if metric == "l1" and top_k is not None and top_k < len(S):
        D, dropped = sparse_l1_condensed(S, top_k)
        return D, {"distances": f"sparse top-{top_k} L1", "top_k": top_k,
                   "dropped_mass": {"mean": round(float(dropped.mean()), 6), "max": round(float(dropped.max()), 6)}}
    if metric == "confusion":
        return confusion_condensed(_host(S)), {"distances": "dense"}
    if on_gpu:
        return tiled_condensed(S.float(), tile, cubic), {"distances": f"dense, float32 tiles on {S.device.type}"}
    if scipy_name is not None:
        return pdist(_host(S), scipy_name).clip(min=0), {"distances": "dense"}
    return tiled_condensed(torch.as_tensor(_host(S), dtype=torch.float32), tile, cubic), {"distances": "dense, float32"}


def _host(S) -> np.ndarray:
    if isinstance(S, torch.Tensor):
        S = S.detach().cpu().numpy()
    return np.ascontiguousarray(S, dtype=np.float64)


def class_distances(S, metric: str = "l1") -> np.ndarray:
    """Symmetric (C, C) float64 distances with a zero diagonal (the square form, for small C)."""
    return squareform(condensed_distances(S, metric)[0].astype(np.float64), checks=False)
