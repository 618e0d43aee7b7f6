"""WordNet hierarchies for data sets whose class ids are WordNet noun ids (`data.wordnet=FOLDER`).

A WordNet id `nXXXXXXXX` is the noun synset whose line starts at byte offset XXXXXXXX of WordNet
3.0's `data.noun` (the folder Debian's `wordnet-base` installs as /usr/share/wordnet/). A data line is
`offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt [symbol offset pos source/target ...] | gloss`,
w_cnt in hexadecimal, p_cnt in decimal; the lines that start with two spaces are the licence.

The tree (ours; docs/method.md "WordNet hierarchies"):
- each class goes up to the root `entity` through its hypernyms (`@`, and `@i` for instances).
  Where a synset has two or more, the FIRST LISTED one is taken: a rule that looks at the synset
  alone, and on Tiny ImageNet's 200 classes it keeps the taxonomic parent (dog -> canine, not
  domestic animal; clothing -> covering; edible fruit -> produce) where the longest path to the
  root would put lemons under botanical fruit and meat loaf under bread;
- a class that is also the ancestor of another class becomes a leaf (its wnid) beside them, under a
  node `wnid+` (the synset with the classes below it);
- an inner node with one child is merged away (the child takes its place, the root included), so
  every inner node splits its classes and depth means something;
- the coarse labels are a cut into K groups (`data.wordnet_groups`, default round(sqrt(C)) as for
  `method.groups`). A cut by depth would give one giant group (for Tiny ImageNet `whole` holds 178 of
  200 classes), so the cut balances: starting from the root as one group, the group with the most
  classes (the first in tree order among equals; children are ordered by wnid) is split until there
  are K groups. A node splits into its children, except that children smaller than the mean group
  size C/K are packed into one group `<node> (rest)` where there are two or more of them beside a
  child of at least that size (without it, a broad node such as `artifact` spends the K groups on
  single classes while `animal` stays whole); a rest group splits into its members. A split that
  would overshoot K keeps its largest parts and packs the others into one rest group, so the cut
  always has exactly K groups, each a node of the tree or a set of siblings under one node.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ccn.errors import DataError

NOUN_FILE = "data.noun"
MAX_NOUN_BYTES = 64 * 2**20  # WordNet 3.0's data.noun is 15 MB
WNID = re.compile(r"n(\d{8})")
HYPERNYMS = ("@", "@i")  # hypernym and instance hypernym
FILE_FIX = ("give data.wordnet the folder of WordNet 3.0's noun database (data.noun: /usr/share/wordnet, or "
            "unpack.sh DEST wordnet)")


@dataclass(frozen=True)
class Synset:
    wnid: str
    words: tuple[str, ...]
    hypernyms: tuple[str, ...]  # wnids, in the order the file lists them

    @property
    def name(self) -> str:
        """The first word, readable: "domestic_cat" -> "domestic cat"."""
        return self.words[0].replace("_", " ")


class NounDatabase:
    """The synsets of a data.noun file, each parsed when first asked for (by seeking to its offset)."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / NOUN_FILE
        self.data = _read_noun_file(Path(folder), self.path)
        self._synsets: dict[str, Synset] = {}

    def synset(self, wnid: str, needed_by: str = "") -> Synset:
        """The synset `wnid`; DataError (one line) unless it is a noun id whose line data.noun holds."""
        if wnid not in self._synsets:
            self._synsets[wnid] = self._parse(wnid, needed_by)
        return self._synsets[wnid]

    def _parse(self, wnid: str, needed_by: str) -> Synset:
        who = f"class id {wnid}" if not needed_by else f"{wnid} (a hypernym of {needed_by})"
        match = WNID.fullmatch(wnid)
        if match is None:
            raise DataError(f"{who} is not a WordNet noun id (n and 8 digits): data.wordnet needs class ids "
                            "that are WordNet 3.0 noun ids")
        offset = int(match.group(1))
        if offset >= len(self.data) or (offset > 0 and self.data[offset - 1:offset] != b"\n") \
                or self.data[offset:offset + 2] == b"  ":
            raise DataError(f"{who} is not in {self.path} (no synset line starts at byte {offset}): is it a "
                            "WordNet 3.0 noun id, and data.wordnet WordNet 3.0's data.noun (other versions "
                            "number their synsets differently)?")
        end = self.data.find(b"\n", offset)
        line = self.data[offset:end if end >= 0 else len(self.data)].decode("utf-8", errors="replace")
        try:
            return _parse_line(line, offset)
        except (ValueError, IndexError) as err:
            raise DataError(f"{who}: the line of {self.path} at byte {offset} is not a WordNet data line "
                            f"({err}): restore WordNet 3.0's data.noun") from None


def _read_noun_file(folder: Path, path: Path) -> bytes:
    """data.noun's bytes: a regular file of at most MAX_NOUN_BYTES, else one line."""
    if not folder.is_dir():
        raise DataError(f"data.wordnet={folder} is not a folder: {FILE_FIX}")
    try:
        facts = path.stat()
    except OSError:
        raise DataError(f"data.wordnet={folder} holds no {NOUN_FILE}: {FILE_FIX}") from None
    if not stat.S_ISREG(facts.st_mode):  # a FIFO or device would block the read or never end
        raise DataError(f"{path} is not a regular file: {FILE_FIX}")
    size = facts.st_size
    try:
        if size > MAX_NOUN_BYTES:
            raise DataError(f"{path} is {size} bytes, more than the {MAX_NOUN_BYTES} WordNet's data.noun may "
                            f"have (15 MB): {FILE_FIX}")
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror or err}): {FILE_FIX}") from None


def _parse_line(line: str, offset: int) -> Synset:
    """A Synset from one data line (ValueError/IndexError where it is malformed)."""
    fields = line.split(" | ", 1)[0].split()
    if int(fields[0]) != offset:
        raise ValueError(f"it starts with offset {fields[0]}")
    if fields[2] not in ("n", "s", "a", "r", "v"):
        raise ValueError(f"synset type {fields[2]!r}")
    word_count = int(fields[3], 16)
    if word_count < 1:
        raise ValueError("no words")
    words = tuple(fields[4:4 + 2 * word_count:2])
    at = 4 + 2 * word_count
    pointer_count = int(fields[at])
    pointers = fields[at + 1:at + 1 + 4 * pointer_count]
    if len(words) != word_count or len(pointers) != 4 * pointer_count:
        raise ValueError(f"{word_count} words and {pointer_count} pointers announced, fewer given")
    hypernyms = []
    for k in range(pointer_count):
        symbol, target, pos, _ = pointers[4 * k:4 * k + 4]
        if symbol in HYPERNYMS and pos == "n":
            if not re.fullmatch(r"\d{8}", target):
                raise ValueError(f"pointer target {target!r}")
            hypernyms.append(f"n{target}")
    return Synset(f"n{offset:08d}", words, tuple(hypernyms))


# ---------------------------------------------------------------- the tree


@dataclass
class WordNetTree:
    """The hypernym tree of a data set's classes after single-child chains are merged away.

    `children[node]` lists a node's children (node ids: wnids, and `wnid+` for a class that is an
    ancestor of other classes); the leaves are the classes' wnids. `names[node]` is its readable
    name. `choices` records each synset on the classes' paths that had several hypernyms:
    (synset, chosen hypernym, the others)."""

    root: str
    children: dict[str, list[str]]
    names: dict[str, str]
    class_ids: list[str]
    choices: list[tuple[str, str, tuple[str, ...]]]

    def leaves(self, node: str) -> list[str]:
        out, stack = [], [node]
        while stack:
            n = stack.pop()
            kids = self.children.get(n)
            if kids:
                stack.extend(reversed(kids))
            else:
                out.append(n)
        return out

    def paths(self) -> list[list[str]]:
        parent = {kid: node for node, kids in self.children.items() for kid in kids}
        out = []
        for class_id in self.class_ids:
            path = [class_id]
            while path[-1] != self.root:
                path.append(parent[path[-1]])
            out.append(path[::-1])
        return out


def hypernym_path(db: NounDatabase, wnid: str) -> tuple[list[str], list[tuple[str, str, tuple[str, ...]]]]:
    """([root, ..., wnid] through each synset's first listed hypernym, the choices made on the way)."""
    path, choices, seen = [wnid], [], {wnid}
    synset = db.synset(wnid)
    while synset.hypernyms:
        first = synset.hypernyms[0]
        if len(synset.hypernyms) > 1:
            choices.append((synset.wnid, first, synset.hypernyms[1:]))
        if first in seen:
            raise DataError(f"{db.path}: the hypernyms of {wnid} go round in a circle at {first}: restore WordNet "
                            "3.0's data.noun")
        seen.add(first)
        path.append(first)
        synset = db.synset(first, needed_by=synset.wnid)
    return path[::-1], choices


def build_tree(db: NounDatabase, class_ids: list[str]) -> WordNetTree:
    """The hypernym tree of `class_ids` (see the module notes), chains of single children merged away."""
    paths, choices = {}, {}
    for wnid in class_ids:
        paths[wnid], made = hypernym_path(db, wnid)
        choices.update((choice[0], choice) for choice in made)
    roots = sorted({path[0] for path in paths.values()})
    if len(roots) > 1:
        raise DataError(f"{db.path}: the classes' hypernyms reach {len(roots)} roots ({', '.join(roots)}), not "
                        "one: restore WordNet 3.0's data.noun")
    inner = {node for path in paths.values() for node in path[:-1]}

    def node_id(wnid: str) -> str:  # a class above other classes: its synset node, with the class a leaf below
        return f"{wnid}+" if wnid in paths and wnid in inner else wnid

    children: dict[str, list[str]] = {}
    for wnid, path in paths.items():
        nodes = [node_id(n) for n in path] + ([wnid] if wnid in inner else [])
        for parent, kid in zip(nodes, nodes[1:]):
            kids = children.setdefault(parent, [])
            if kid not in kids:
                kids.append(kid)
    root = _merge_chains(node_id(roots[0]), children)
    names = {node: db.synset(node.rstrip("+")).name for node in [*children, *class_ids]}
    return WordNetTree(root, children, names, list(class_ids), sorted(choices.values()))


def _merge_chains(root: str, children: dict[str, list[str]]) -> str:
    """Merge away every inner node with one child (its child takes its place), order every node's
    children by id; the new root. Without recursion: a damaged file may chain synsets deeper than
    Python's recursion limit."""
    order, stack = [], [root]
    while stack:  # every node has one parent (its first hypernym), so each is reached once
        node = stack.pop()
        order.append(node)
        stack.extend(children.get(node, ()))
    replaced: dict[str, str] = {}
    for node in reversed(order):  # children before their parents
        if node not in children:
            continue
        kids = sorted(replaced.get(kid, kid) for kid in children[node])  # by id: the cut ignores the class order
        if len(kids) == 1:
            del children[node]
            replaced[node] = kids[0]
        else:
            children[node] = kids
    return replaced.get(root, root)


# ---------------------------------------------------------------- the balanced cut


@dataclass
class Group:
    """One coarse group: a node of the tree, or several children of `parent` packed into one (a rest group)."""

    nodes: list[str]
    name: str
    parent: Optional[str] = None  # a rest group's: the node whose children `nodes` are


def default_wordnet_groups(num_classes: int) -> int:
    """round(sqrt(C)), method.groups' default (ccn.hierarchy.default_group_count), at most C."""
    return max(1, min(num_classes, int(round(num_classes ** 0.5))))


class _Cut:
    """The balanced cut's bookkeeping: class counts of nodes and groups, and how a group splits."""

    def __init__(self, tree: WordNetTree, num_groups: int):
        self.tree = tree
        self.sizes = {node: len(tree.leaves(node)) for node in [*tree.children, *tree.class_ids]}
        self.mean = len(tree.class_ids) / num_groups  # the mean group size C/K

    def size(self, group: Group) -> int:
        return sum(self.sizes[node] for node in group.nodes)

    def splittable(self, group: Group) -> bool:
        return len(group.nodes) > 1 or group.nodes[0] in self.tree.children

    def node(self, node: str) -> Group:
        return Group([node], self.tree.names[node])

    def rest(self, nodes: list[str], parent: str) -> Group:
        return Group(nodes, f"{self.tree.names[parent]} (rest)", parent)

    def parts(self, group: Group) -> tuple[list[Group], str]:
        """(the parts `group` splits into, the node whose children they are): a rest group's members;
        a node's children, those under the mean size packed into one rest group where there are two or
        more of them beside a child of at least the mean size."""
        if len(group.nodes) > 1:
            return [self.node(n) for n in group.nodes], group.parent
        parent = group.nodes[0]
        kids = self.tree.children[parent]
        small = [kid for kid in kids if self.sizes[kid] < self.mean]
        if len(small) < 2 or len(small) == len(kids):
            return [self.node(kid) for kid in kids], parent
        return [self.node(kid) for kid in kids if kid not in small] + [self.rest(small, parent)], parent

    def fit(self, parts: list[Group], parent: str, room: int) -> list[Group]:
        """`parts`, or where there are more than `room`, the largest room - 1 of them (the first among
        equals) and one rest group of the others."""
        if len(parts) <= room:
            return parts
        by_size = sorted(parts, key=lambda g: -self.size(g))  # stable: the first among equals stays
        kept = by_size[:room - 1]
        merged = [node for g in parts if not any(g is k for k in kept) for node in g.nodes]
        return [g for g in parts if any(g is k for k in kept)] + [self.rest(merged, parent)]


def balanced_cut(tree: WordNetTree, num_groups: int) -> list[Group]:
    """Exactly `num_groups` groups (at most the number of classes): from the root, the group with the
    most classes is split until there are that many (the module notes give the rule)."""
    cut = _Cut(tree, num_groups)
    groups = [cut.node(tree.root)]
    while len(groups) < num_groups:
        largest = max((g for g in groups if cut.splittable(g)), key=cut.size)  # max keeps the first among equals
        at = groups.index(largest)
        parts, parent = cut.parts(largest)
        groups[at:at + 1] = cut.fit(parts, parent, num_groups - len(groups) + 1)
    return _unambiguous(groups)


def _unambiguous(groups: list[Group]) -> list[Group]:
    """Add the wnid to the names that two groups share (organ, the body part and the instrument)."""
    counts: dict[str, int] = {}
    for g in groups:
        counts[g.name] = counts.get(g.name, 0) + 1
    return [g if counts[g.name] == 1 else Group(g.nodes, f"{g.name} ({(g.parent or g.nodes[0]).rstrip('+')})", g.parent)
            for g in groups]


def coarse_labels(tree: WordNetTree, groups: list[Group]) -> list[int]:
    """The group of each class, in the order of tree.class_ids."""
    group_of = {leaf: k for k, g in enumerate(groups) for node in g.nodes for leaf in tree.leaves(node)}
    return [group_of[wnid] for wnid in tree.class_ids]


def two_level_tree(tree: WordNetTree, groups: list[Group]) -> list:
    """The cut as groups and sub-groups of class ids, the shape hierarchy.json holds at method.depth=2:
    a group's sub-groups are its node's children (or its merged siblings), each with every class
    below it; a group whose sub-groups would all be single classes is a plain list of classes."""
    out = []
    for g in groups:
        parts = g.nodes if len(g.nodes) > 1 else tree.children.get(g.nodes[0], g.nodes)
        subgroups = [tree.leaves(part) for part in parts]
        out.append(subgroups if any(len(s) > 1 for s in subgroups) else [c for s in subgroups for c in s])
    return out


# ---------------------------------------------------------------- the data set's coarse labels


def wordnet_hierarchy(class_ids: list[str], folder: str | Path, num_groups: Optional[int]) -> tuple:
    """(tree, groups) of `class_ids` in the data.noun of `folder`, cut into num_groups (default round(sqrt(C)))."""
    C = len(class_ids)
    K = num_groups if num_groups is not None else default_wordnet_groups(C)
    if K > C:
        raise DataError(f"data.wordnet_groups={K} is more than the {C} classes: choose at most {C}")
    tree = build_tree(NounDatabase(folder), class_ids)
    return tree, balanced_cut(tree, K)


def apply_wordnet(ds, folder: str | Path, num_groups: Optional[int]):
    """Give `ds` (an ImageDataset whose class ids are wnids) the WordNet cut as its coarse labels
    (coarse, coarse_names: what method.partition=oracle uses) and each class's path from the root
    (tree_paths); return it."""
    tree, groups = wordnet_hierarchy(_wordnet_ids(ds), folder, num_groups)
    ds.coarse = coarse_labels(tree, groups)
    ds.coarse_names = [g.name for g in groups]
    ds.tree_paths = tree.paths()
    return ds


def wordnet_groups_of(ds, folder: str | Path, num_groups: Optional[int]) -> tuple[list, list[str], list[str]]:
    """(the cut as groups and sub-groups of class indices, the group names, the choices made at synsets
    with several hypernyms as "synset -> chosen (not other, ...)") of `ds`, for a groups file."""
    tree, groups = wordnet_hierarchy(_wordnet_ids(ds), folder, num_groups)
    index = {wnid: i for i, wnid in enumerate(ds.class_ids)}
    indexed = [[[index[c] for c in sub] if isinstance(sub, list) else index[sub] for sub in group]
               for group in two_level_tree(tree, groups)]
    db = NounDatabase(folder)
    choices = [f"{db.synset(synset).name} -> {db.synset(chosen).name} (not "
               f"{', '.join(db.synset(o).name for o in others)})" for synset, chosen, others in tree.choices]
    return indexed, [g.name for g in groups], choices


def _wordnet_ids(ds) -> list[str]:
    """The data set's class ids, which must be there for data.wordnet (each is checked as it is looked up)."""
    if not ds.class_ids:
        raise DataError(f"data.wordnet needs class ids that are WordNet ids (imagenet, tinyimagenet): "
                        f"data.name={ds.name} has none")
    return ds.class_ids
