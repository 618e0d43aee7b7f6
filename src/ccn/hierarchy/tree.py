"""The Hierarchy: the class groups a run found, with class names, saved as `hierarchy.json`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from scipy.cluster.hierarchy import is_valid_linkage

from ccn.errors import CCNError, ConfigError
from ccn.files import atomic_write, open_regular
from ccn.records import read_record, stamp
from ccn.runfiles import DISTANCES_FILE
from ccn.file_checks import (Invalid, checked, read_json, require_int, require_keys, require_list, require_list_of_str,
                             require_mapping, require_matrix, require_number, require_numbers, require_str)


def group_labels(groups: list[list[int]], num_classes: int) -> list[int]:
    """The group of each class; ConfigError unless every class is in exactly one group. Plain Python:
    a hierarchy.json is read and checked without torch (a report of a finished grid)."""
    group_of = [-1] * num_classes
    for k, members in enumerate(groups):
        for c in members:
            if group_of[c] != -1:
                raise ConfigError(f"class {c} is in groups {group_of[c]} and {k}: a partition needs disjoint groups")
            group_of[c] = k
    missing = [c for c, k in enumerate(group_of) if k < 0]
    if missing:
        raise ConfigError(f"classes {missing[:10]} are in no group: a partition must cover every class")
    return group_of


def group_index(groups: list[list[int]], num_classes: int) -> torch.Tensor:
    """(C,) long tensor: the group of each class; every class must be in exactly one group."""
    import torch  # here, not above: see group_labels

    return torch.tensor(group_labels(groups, num_classes), dtype=torch.long)


def mask_matrix(group_of: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(K, C) bool: M[k, c] is True where class c belongs to group k."""
    from torch.nn import functional as F

    return F.one_hot(group_of, num_groups).T.bool()


def leaves(node) -> list[int]:
    """All class indices under a node of a nested-list tree."""
    return [node] if not isinstance(node, list) else [c for child in node for c in leaves(child)]


def tree_depth(node) -> int:
    return 0 if not isinstance(node, list) else 1 + max(tree_depth(child) for child in node)


def _has_empty_node(node) -> bool:
    """Whether the nested-list tree has an empty list (a group or sub-group of no class) anywhere."""
    return isinstance(node, list) and (not node or any(_has_empty_node(child) for child in node))


def _map_tree(node, fn):
    return [_map_tree(child, fn) for child in node] if isinstance(node, list) else fn(node)


@dataclass
class Hierarchy:
    """`tree` is a nested list whose leaves are class indices; its top-level entries are the groups.

    A depth-1 tree is a plain partition, e.g. [[0, 3], [1, 2]]; a depth-2 tree splits groups
    again, e.g. [[[0], [3, 5]], [1, 2, 4]]. `merges` (scipy linkage matrix) and `distances` keep
    what the clustering saw, for plots. `distances` are condensed (scipy's layout, C(C-1)/2 float32
    values) and saved beside hierarchy.json as distances.npy, once per run: never in the JSON, which
    stays small at 10,000 classes, nor in checkpoints. `load` leaves them on disk (predict and
    evaluate never need them); `with_distances` reads them for plots."""

    classes: list[str]
    tree: list
    how: dict = field(default_factory=dict)  # partition kind, metric, linkage, epoch ...
    distances: Optional[np.ndarray] = None
    merges: Optional[np.ndarray] = None

    def __post_init__(self):
        if _has_empty_node(self.tree):  # a group (or sub-group) of no class would get a softmax over nothing
            raise ConfigError("a group of the partition holds no class: every group needs at least one")
        group_labels(self.groups, len(self.classes))  # raises unless every class is in exactly one group

    @property
    def groups(self) -> list[list[int]]:
        return [sorted(leaves(g)) for g in self.tree]

    @property
    def depth(self) -> int:
        return max(1, tree_depth(self.tree) - 1)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def group_of(self) -> torch.Tensor:
        return group_index(self.groups, self.num_classes)

    def mask(self) -> torch.Tensor:
        """(K, C) bool mask matrix of the level-1 groups."""
        return mask_matrix(self.group_of(), len(self.tree))

    def named_groups(self) -> list[list[str]]:
        return [[self.classes[c] for c in g] for g in self.groups]

    def to_json(self) -> dict:
        """The hierarchy record (ccn.records "hierarchy"): hierarchy.json, and the groups a checkpoint holds."""
        return stamp("hierarchy", {
            "classes": self.classes,
            "groups": self.named_groups(),
            "tree": _map_tree(self.tree, lambda c: self.classes[c]),
            "depth": self.depth,
            "how": self.how,
            "merges": None if self.merges is None else self.merges.tolist(),
        })

    @classmethod
    def from_json(cls, data, source: str = "hierarchy.json") -> "Hierarchy":
        """A Hierarchy from its record (of any format this ccn reads); CCNError naming `source` unless
        every field holds what it must."""
        fix = "restore the file the run wrote, or train the run again"
        with checked(source, fix):
            return cls(*parse_hierarchy(read_record("hierarchy", data, fix, source)))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    def with_distances(self, run_dir: str | Path) -> "Hierarchy":
        """This hierarchy with its class distances: those it holds (a format-0 hierarchy.json kept them in
        the JSON), else the run folder's distances.npy (CCNError, one line, if missing or damaged)."""
        if self.distances is None:
            self.distances = read_distances(Path(run_dir) / DISTANCES_FILE, self.num_classes)
        return self

    @classmethod
    def load(cls, path: str | Path) -> "Hierarchy":
        fix = "is this the folder of a ccn (not flat) run? restore the file, or train the run again"
        return cls.from_json(read_json(Path(path), "hierarchy file", fix), str(path))


# ---------------------------------------------------------------- the distances file

DISTANCES_FIX = "restore the file the run wrote, or train the run again (step 2 writes it)"


def save_distances(path: str | Path, distances: np.ndarray) -> None:
    """Write condensed distances as a plain .npy array (no pickled objects), atomically."""
    D = np.ascontiguousarray(distances, dtype=np.float32)
    atomic_write(Path(path), lambda tmp: _save_npy(tmp, D))


def _save_npy(tmp: Path, D: np.ndarray) -> None:
    with open(tmp, "wb") as handle:  # a file handle: np.save would add .npy to the temporary name
        np.save(handle, D, allow_pickle=False)


def read_distances(path: Path, num_classes: int) -> np.ndarray:
    """The condensed distances of `num_classes` classes in `path`; CCNError naming the file unless it
    is a regular file holding a plain .npy of C(C-1)/2 finite, non-negative numbers.

    The header is read and checked before any data (numpy's own reader raised AttributeError on an
    .npz, TypeError on a shape of (True, True, True) and OverflowError on one of (10**20,)), then
    exactly the bytes it declares."""
    if not os.path.lexists(path):
        raise CCNError(f"{path} is missing: the class distances are needed for this; {DISTANCES_FIX}")
    expected = num_classes * (num_classes - 1) // 2
    with open_regular(path, None, "distances file", DISTANCES_FIX) as handle:
        shape, dtype = _npy_header(handle, path)
        if shape != (expected,) or dtype.kind != "f" or dtype.itemsize > 8:
            raise CCNError(f"{path} holds a {dtype} array of shape {shape}, not the {expected} distances of "
                           f"{num_classes} classes: {DISTANCES_FIX}")
        data = handle.read(expected * dtype.itemsize)
    if len(data) != expected * dtype.itemsize:
        raise CCNError(f"{path} is cut short ({len(data)} of {expected * dtype.itemsize} data bytes): {DISTANCES_FIX}")
    D = np.frombuffer(data, dtype=dtype).astype(np.float32)
    if not np.isfinite(D).all() or (D < 0).any():
        raise CCNError(f"{path} holds negative or non-finite distances: {DISTANCES_FIX}")
    return D


def _npy_header(handle, path: Path) -> tuple[tuple, np.dtype]:
    """(shape, dtype) from an open .npy file's header; CCNError unless it is a C-ordered array of plain
    numbers (never objects) whose shape is a tuple of whole numbers."""
    from numpy.lib import format as npy

    try:
        readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
        version = npy.read_magic(handle)
        if version not in readers:
            raise ValueError(f"format version {version[0]}.{version[1]}, not 1.0 or 2.0")
        shape, fortran, dtype = readers[version](handle)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, OverflowError) as err:
        raise CCNError(f"{path} is not a readable .npy array ({err}): {DISTANCES_FIX}") from None
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise CCNError(f"{path} declares the shape {shape!r}, which is not a list of sizes: {DISTANCES_FIX}")
    if dtype.hasobject:  # pickled: never loaded, whatever it holds
        raise CCNError(f"{path} is not a readable .npy array (it holds pickled Python objects, which ccn never "
                       f"loads): {DISTANCES_FIX}")
    if fortran:
        raise CCNError(f"{path} holds a Fortran-ordered array, not the plain distances ccn writes: {DISTANCES_FIX}")
    return shape, dtype


# ---------------------------------------------------------------- reading hierarchy.json back

KNOWN_HOW = {"partition": str, "metric": str, "linkage": str, "probe_set": str, "num_groups": int, "epoch": int,
             "depth": int, "split_epoch": int, "coarse_ari": float, "coarse_nmi": float}


def parse_hierarchy(data) -> tuple:
    """(classes, tree of indices, how, distances, merges) from a hierarchy record in today's layout
    (ccn.records); Invalid unless the class names are unique, every group names known classes, and
    every class is in exactly one group."""
    require_mapping(data, "the file")
    classes = require_list_of_str(require_keys(data, ["classes"])["classes"], "'classes'")
    if len(classes) < 2:
        raise Invalid(f"'classes' must name at least 2 classes, has {len(classes)}")
    index = {name: i for i, name in enumerate(classes)}
    if data.get("tree") is None and data.get("groups") is None:
        raise Invalid("lacks 'groups'")
    tree = [_parse_group(g, index, f"'tree' group {k + 1}") for k, g in enumerate(
        require_list(data["tree"], "'tree'", min_length=1) if data.get("tree") is not None else [])]
    if data.get("groups") is not None:
        groups = [_parse_group(g, index, f"'groups' group {k + 1}", depth=1) for k, g in enumerate(
            require_list(data["groups"], "'groups'", min_length=1))]
        if tree and [sorted(leaves(t)) for t in tree] != [sorted(g) for g in groups]:
            raise Invalid("'groups' and 'tree' do not hold the same classes in the same groups")
        tree = tree or groups
    _require_partition(tree, classes)
    how = require_mapping(data.get("how") or {}, "'how'")
    for key, kind in KNOWN_HOW.items():
        if key in how:
            check = {str: require_str, int: require_int, float: require_number}[kind]
            check(how[key], f"'how'.{key}")
    if ("coarse_ari" in how) != ("coarse_nmi" in how):
        raise Invalid("'how' must hold both coarse_ari and coarse_nmi, or neither")
    if "coarse" in how:
        require_numbers(how["coarse"], "'how'.coarse", len(classes))
    C = len(classes)
    # today's files keep them in distances.npy; a format-0 file's, condensed by its upgrade step
    distances = None if data.get("distances") is None else np.asarray(
        require_numbers(data["distances"], "'distances'", C * (C - 1) // 2, 0), dtype=np.float32)
    merges = None if data.get("merges") is None else np.asarray(
        require_matrix(data["merges"], "'merges'", C - 1, 4), dtype=np.float64)
    if merges is not None and not is_valid_linkage(merges):
        raise Invalid("'merges' is not a valid merge tree (scipy linkage matrix)")
    return classes, tree, how, distances, merges


def _parse_group(node, index: dict, where: str, depth: int = 2) -> list:
    """A group as class indices: a non-empty list of class names, or (depth 2) of such lists."""
    require_list(node, where, min_length=1)
    if all(isinstance(item, str) for item in node):
        return [_class_index(name, index, where) for name in node]
    if depth < 2 or not all(isinstance(item, list) for item in node):
        raise Invalid(f"{where} must be a list of class names" + (" or of lists of class names" if depth == 2 else ""))
    return [_parse_group(item, index, f"{where}, part {i + 1}", depth=1) for i, item in enumerate(node)]


def _class_index(name: str, index: dict, where: str) -> int:
    if name not in index:
        raise Invalid(f"{where} names {name!r}, which is not in 'classes'")
    return index[name]


def _require_partition(tree: list, classes: list[str]) -> None:
    group_of: dict[int, int] = {}
    for k, node in enumerate(tree):
        for c in leaves(node):
            if c in group_of:
                where = "twice in group" if group_of[c] == k else "in groups"
                raise Invalid(f"class {classes[c]!r} is {where} {group_of[c] + 1}" +
                              ("" if group_of[c] == k else f" and {k + 1}") + ": every class must be in exactly one group")
            group_of[c] = k
    missing = [classes[c] for c in range(len(classes)) if c not in group_of]
    if missing:
        raise Invalid(f"classes {missing[:5]} are in no group: every class must be in exactly one group")


def partition_labels(groups: list[list[int]], num_classes: int) -> list[int]:
    labels = [0] * num_classes
    for k, members in enumerate(groups):
        for c in members:
            labels[c] = k
    return labels


def agreement(groups_a: list[list[int]], groups_b: list[list[int]] | list[int], num_classes: int) -> dict:
    """Adjusted Rand index and NMI between two partitions of the classes (groups or per-class labels)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    a = partition_labels(groups_a, num_classes)
    b = groups_b if groups_b and not isinstance(groups_b[0], list) else partition_labels(groups_b, num_classes)
    return {"ari": float(adjusted_rand_score(b, a)), "nmi": float(normalized_mutual_info_score(b, a))}
