"""Partitions a user brings (`method.partition=file`, `method.groups_file=PATH`).

Two formats are read:
- our own `hierarchy.json` (any ccn run folder's), matched to the data set by class name;
- the node-link graph JSON that NBDT ships for its induced and WordNet hierarchies:
  `{"nodes": [{"id": ..., "label": ...}, ...], "links": [{"source": ..., "target": ...}, ...]}`,
  a tree whose leaves are the classes. A leaf is matched to a class by its `id` when the data set
  has class ids (ImageNet's wnids, which NBDT's ImageNet leaves use as ids), else by its `label`
  where no other leaf has that label, else by its `id` as a class name. NBDT's ImageNet-1000 labels
  repeat (crane, cardigan and maillot each name two classes), so those files need the ids.

At depth 1 the groups are the root's children (each with every class below it); at depth 2,
groups and their sub-groups are kept, with chains of single children collapsed (deeper trees are
refused). A root whose children are all classes is one group of every class (K = 1). Node-link
graphs must be trees: a node with two parents (or linked twice) is refused, since it would be
expanded once per path.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional

from ccn.errors import CCNError, ConfigError
from ccn.hierarchy.tree import _has_empty_node
from ccn.file_checks import checked, file_problem, read_text, refuse_constant
from ccn.records import read_record


def read_groups_file(path: str | Path, classes: list[str], whole_tree: bool,
                     class_ids: Optional[list[str]] = None) -> list:
    """The tree of class indices that `path` describes, for the data set's `classes` (and their
    `class_ids`, when the data set has them: see the module notes)."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        problem = "is missing" if problem == "does not exist" else problem  # the words users and tests know
        raise ConfigError(f"method.groups_file={path} {problem}: give a hierarchy.json or an NBDT graph JSON file")
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
        # a ccn hierarchy record: one of a newer format is refused (its groups may mean something else)
        data = read_record("hierarchy", data, "give a hierarchy.json or an NBDT graph JSON file",
                           f"method.groups_file={path}")
        key = "tree" if "tree" in data else "groups"
        named = data[key]
        if not isinstance(named, list) or not named:
            raise ConfigError(f"method.groups_file={path}: '{key}' must be a non-empty list of groups (lists of "
                              f"class names), got {_short(named)}")
    else:
        raise ConfigError(f"method.groups_file={path} is neither a ccn hierarchy.json (with 'groups') nor a "
                          "node-link graph (with 'nodes' and 'links')")
    tree = _index_tree(named, classes, path)
    if not any(isinstance(node, list) for node in tree):  # the root holds the classes: no grouping below it
        tree = [tree]  # one group of every class (K = 1), not one group per class
    if _has_empty_node(tree):
        raise ConfigError(f"method.groups_file={path} has a group with no class in it: remove the empty group")
    tree = [_collapse(node) for node in tree]  # chains of single children; the root's own children stay
    return _two_levels(tree, path) if whole_tree else [_leaves(node) for node in tree]


def _two_levels(tree: list, path: Path) -> list:
    """The tree in the shape a run folder's hierarchy.json holds: every group a list of classes or a
    list of sub-groups (lists of classes). A class beside sub-groups (or directly under the root)
    becomes a one-class (sub-)group, which gives it the same probability; deeper trees are refused."""
    def as_list(node):
        return node if isinstance(node, list) else [node]

    groups = []
    for k, group in enumerate(map(as_list, tree)):
        if any(isinstance(child, list) for child in group):
            group = [as_list(child) for child in group]
            if any(isinstance(c, list) for sub in group for c in sub):
                raise ConfigError(f"method.groups_file={path}: group {k + 1} is split more than once (the tree is "
                                  "deeper than groups and sub-groups): method.depth=2 reads at most two levels "
                                  "below the root; flatten the file, or use method.depth=1 for its top groups")
        groups.append(group)
    return groups


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    """Nested lists of the class names of the leaves below the root of a node-link graph, refused
    unless it is a tree."""
    where = f"method.groups_file={path}"
    nodes, links = data["nodes"], data["links"]
    if not isinstance(nodes, list) or not isinstance(links, list):
        raise ConfigError(f"{where}: 'nodes' and 'links' must be lists, got {_short(nodes)} and {_short(links)}")
    names: dict = {}
    for i, node in enumerate(nodes):
        node_id = _field(node, "id", f"node {i + 1}", where)
        if node_id in names:
            raise ConfigError(f"{where}: node id {node_id!r} is used twice: give every node its own id")
        names[node_id] = _field(node, "label", f"node {i + 1}", where) if "label" in node else node_id
    children: dict = {}
    parent: dict = {}
    for i, link in enumerate(links):
        source, target = (_field(link, key, f"link {i + 1}", where) for key in ("source", "target"))
        for key, end in (("source", source), ("target", target)):
            if end not in names:
                raise ConfigError(f"{where}: link {i + 1}'s {key} {end!r} is not in 'nodes': add the node or "
                                  "remove the link")
        if target in parent:  # a repeated link, or a second parent: shared nodes would be expanded again and again
            again = "is linked twice from" if parent[target] == source else f"has two parents, {parent[target]!r} and"
            raise ConfigError(f"{where}: node {target!r} {again} {source!r}; a hierarchy is a tree, in which every "
                              "node has one parent: remove the extra link")
        parent[target] = source
        children.setdefault(source, []).append(target)
    leaf_name = LeafMatcher(classes, class_ids, [label for n, label in names.items() if n not in children])
    names = {n: leaf_name(n, label) for n, label in names.items()}
    roots = [n for n in names if n not in parent]
    if len(roots) != 1:
        raise ConfigError(f"{where} must describe one tree with one root; it has {len(roots)} "
                          "nodes without a parent")

    reached = set()

    def expand(node):  # each node is reached once: every node has one parent and the root none
        reached.add(node)
        kids = children.get(node, [])
        return [expand(kid) for kid in kids] if kids else names[node]

    tree = expand(roots[0])
    if len(reached) != len(names):  # every node has one parent, so the nodes not reached form a cycle
        stray = next(n for n in names if n not in reached)
        raise ConfigError(f"{where}: the graph has a cycle through node {stray!r}: a hierarchy is a tree")
    return tree if isinstance(tree, list) else [tree]


def _field(entry, key: str, what: str, where: str):
    """entry[key], a node id or label: text or a whole number."""
    if not isinstance(entry, dict) or key not in entry:
        raise ConfigError(f"{where}: every node needs an 'id' and every link a 'source' and 'target'; {what} "
                          f"is {_short(entry)}")
    value = entry[key]
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ConfigError(f"{where}: {what}'s '{key}' must be text or a whole number, got {_short(value)}")
    return value


def _index_tree(node, classes: list[str], path: Path):
    """The nested list of class names as class indices, refused unless it names each class once."""
    index = {name: i for i, name in enumerate(classes)}
    seen: list[str] = []

    def walk(n):
        if isinstance(n, list):
            return [walk(child) for child in n]
        if not isinstance(n, (str, int)) or isinstance(n, bool):
            raise ConfigError(f"method.groups_file={path} holds {_short(n)} where a class name or a list belongs: "
                              "groups are lists of class names")
        seen.append(str(n))
        return index.get(str(n))

    tree = walk(node)
    counts = Counter(seen)  # one pass: a file may name hundreds of thousands of classes
    unknown = [name for name in seen if name not in index]
    missing = [name for name in classes if name not in counts]
    repeated = sorted(name for name, count in counts.items() if count > 1)
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
