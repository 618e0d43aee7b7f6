"""Partitions a user brings (`method.partition=file`, `method.groups_file=PATH`).

Two formats are read:
- our own `hierarchy.json` (any ccn run folder's), matched to the data set by class name;
- the node-link graph JSON that NBDT ships for its induced and WordNet hierarchies:
  `{"nodes": [{"id": ..., "label": ...}, ...], "links": [{"source": ..., "target": ...}, ...]}`,
  a tree whose leaves are the classes. A leaf is matched to a class by its `id` when the data set
  has class ids (ImageNet's wnids, which NBDT's ImageNet leaves use as ids), else by its `label`
  where no other leaf has that label, else by its `id` as a class name. NBDT's ImageNet-1000 labels
  repeat (crane, cardigan and maillot each name two classes), so those files need the ids.

At depth 1 the groups are the root's children (each with every class below it); deeper, the
whole tree is kept, with chains of single children collapsed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional

from ccn.errors import CCNError, ConfigError
from ccn.hierarchy.tree import _has_empty_node
from ccn.validate import checked, read_text, refuse_constant


def read_groups_file(path: str | Path, classes: list[str], whole_tree: bool,
                     class_ids: Optional[list[str]] = None) -> list:
    """The tree of class indices that `path` describes, for the data set's `classes` (and their
    `class_ids`, when the data set has them: see the module notes)."""
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "missing"
        raise ConfigError(f"method.groups_file={path} is {what}: give a hierarchy.json or an NBDT graph JSON file")
    fix = "give a hierarchy.json or an NBDT graph JSON file"
    try:  # size, binary and encoding are checked as for every file ccn reads
        text = read_text(path, "method.groups_file", fix)
    except CCNError as err:
        raise ConfigError(str(err)) from None
    try:
        data = json.loads(text, parse_constant=refuse_constant)
    except (ValueError, RecursionError) as err:  # RecursionError: nested too deeply to parse
        raise ConfigError(f"method.groups_file={path} is not readable JSON ({err or 'nested too deeply'}): {fix}") from None
    with checked(f"method.groups_file={path}", fix):  # a tree too deep for the recursive walks below
        return _groups_from(data, path, classes, whole_tree, class_ids)


def _groups_from(data, path: Path, classes: list[str], whole_tree: bool, class_ids: Optional[list[str]]) -> list:
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        named = _node_link_tree(data, path, classes, class_ids)
    elif isinstance(data, dict) and ("tree" in data or "groups" in data):
        named = data.get("tree") or data["groups"]
    else:
        raise ConfigError(f"method.groups_file={path} is neither a ccn hierarchy.json (with 'groups') nor a "
                          "node-link graph (with 'nodes' and 'links')")
    tree = _collapse(_index_tree(named, classes, path))
    if not isinstance(tree, list):
        raise ConfigError(f"method.groups_file={path} holds a single class: a partition needs at least two")
    tree = tree if whole_tree else [_leaves(node) for node in tree]
    if _has_empty_node(tree):
        raise ConfigError(f"method.groups_file={path} has a group with no class in it: remove the empty group")
    return tree


class LeafMatcher:
    """The class name a node-link leaf stands for: by id among the class ids, by a label no other
    leaf has, or by id among the class names; else its label (reported as not a class)."""

    def __init__(self, classes: list[str], class_ids: Optional[list[str]], leaf_labels: list[str]):
        self.classes = set(classes)
        self.by_id = dict(zip(class_ids, classes)) if class_ids is not None else {}
        self.unique_labels = {label for label, n in Counter(leaf_labels).items() if n == 1}

    def __call__(self, node_id, label) -> str:
        node_id, label = str(node_id), str(label)
        if node_id in self.by_id:
            return self.by_id[node_id]
        if label in self.unique_labels and label in self.classes:
            return label
        if node_id in self.classes:
            return node_id
        return label


def _node_link_tree(data: dict, path: Path, classes: list[str], class_ids: Optional[list[str]]) -> list:
    """Nested lists of the class names of the leaves below the root of a node-link graph."""
    try:
        labels = {node["id"]: str(node.get("label", node["id"])) for node in data["nodes"]}
        children: dict = {}
        has_parent = set()
        for link in data["links"]:
            children.setdefault(link["source"], []).append(link["target"])
            has_parent.add(link["target"])
        leaf_name = LeafMatcher(classes, class_ids, [label for n, label in labels.items() if n not in children])
        names = {n: leaf_name(n, label) for n, label in labels.items()}
    except (TypeError, KeyError, AttributeError) as err:
        raise ConfigError(f"method.groups_file={path}: every node needs an 'id' and every link a 'source' and "
                          f"'target' ({err!r} is missing)") from None
    roots = [n for n in names if n not in has_parent]
    if len(roots) != 1:
        raise ConfigError(f"method.groups_file={path} must describe one tree with one root; it has {len(roots)} "
                          "nodes without a parent")

    def expand(node, seen):
        if node in seen:
            raise ConfigError(f"method.groups_file={path}: the graph has a cycle through node {node!r}")
        kids = children.get(node, [])
        if not kids:
            return str(names[node])
        return [expand(kid, seen | {node}) for kid in kids]

    tree = expand(roots[0], frozenset())
    return tree if isinstance(tree, list) else [tree]


def _index_tree(node, classes: list[str], path: Path):
    index = {name: i for i, name in enumerate(classes)}
    seen: list[str] = []

    def walk(n):
        if isinstance(n, list):
            return [walk(child) for child in n]
        seen.append(str(n))
        return index.get(str(n))

    tree = walk(node)
    unknown = [name for name in seen if name not in index]
    missing = [name for name in classes if name not in seen]
    repeated = sorted({name for name in seen if seen.count(name) > 1})
    if unknown or missing or repeated:
        parts = []
        if unknown:
            parts.append(f"not classes of this data set: {', '.join(unknown[:5])}")
        if missing:
            parts.append(f"classes missing from the file: {', '.join(missing[:5])}")
        if repeated:
            parts.append(f"named twice: {', '.join(repeated[:5])}")
        raise ConfigError(f"method.groups_file={path} does not match the data set's class names ({'; '.join(parts)}): "
                          "use a hierarchy made for these classes")
    if not isinstance(tree, list) or len(tree) < 1:
        raise ConfigError(f"method.groups_file={path} holds no groups")
    return tree


def _leaves(node) -> list[int]:
    return sorted([node] if not isinstance(node, list) else [c for child in node for c in _leaves(child)])


def _collapse(node):
    """Drop chains of single children: a node with one child is that child."""
    if not isinstance(node, list):
        return node
    kids = [_collapse(child) for child in node]
    return kids[0] if len(kids) == 1 else kids
