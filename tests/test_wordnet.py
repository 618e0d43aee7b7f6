"""WordNet hierarchies (data.wordnet): the parser of data.noun, the tree with its chains merged away, the
balanced cut, the coarse labels and tree paths a data set gets, and the groups file of `ccn wordnet`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ccn import config as cfgmod
from ccn.config import DataConfig
from ccn.data import load_dataset
from ccn.data import wordnet
from ccn.data.wordnet import NounDatabase, balanced_cut, build_tree, coarse_labels, two_level_tree
from ccn.errors import CCNError, ConfigError, DataError
from conftest import SHARED_DATA, run_cli

HEADER = ["  1 This software and database is being provided to you, the LICENSEE, by",
          "  2 Princeton University under the following license."]

# (key, words, hypernym keys in the order the file lists them). entity -> physical -> object is a
# chain of single children; dog has two hypernyms (canine first); canine, feline and plaything
# have one child each; domestic_animal is only dog's second hypernym.
SYNSETS = [
    ("entity", ["entity"], []),
    ("physical", ["physical_entity"], ["entity"]),
    ("object", ["object", "physical_object"], ["physical"]),
    ("animal", ["animal"], ["object"]),
    ("carnivore", ["carnivore"], ["animal"]),
    ("canine", ["canine"], ["carnivore"]),
    ("domestic_animal", ["domestic_animal"], ["animal"]),
    ("dog", ["dog", "domestic_dog"], ["canine", "domestic_animal"]),
    ("poodle", ["poodle"], ["dog"]),
    ("terrier", ["terrier"], ["dog"]),
    ("feline", ["feline"], ["carnivore"]),
    ("cat", ["cat"], ["feline"]),
    ("tabby", ["tabby"], ["cat"]),
    ("persian", ["Persian_cat"], ["cat"]),
    ("bird", ["bird"], ["animal"]),
    ("robin", ["robin"], ["bird"]),
    ("jay", ["jay"], ["bird"]),
    ("artifact", ["artifact"], ["object"]),
    ("vehicle", ["vehicle"], ["artifact"]),
    ("car", ["car", "auto"], ["vehicle"]),
    ("bus", ["bus"], ["vehicle"]),
    ("bike", ["bike"], ["vehicle"]),
    ("plaything", ["plaything"], ["artifact"]),
    ("teddy", ["teddy"], ["plaything"]),
    ("rock", ["rock"], ["object"]),
]
CLASSES = ["poodle", "terrier", "tabby", "persian", "robin", "jay", "car", "bus", "bike", "teddy", "rock"]


def write_noun_file(folder: Path, synsets=SYNSETS, pointers=None) -> dict[str, str]:
    """A data.noun in WordNet 3.0's format (licence header, byte offsets as ids, hex word counts,
    hypernym and other pointers); returns each key's wnid. Offsets are 8 digits, so every line's
    length is known before the offsets are."""
    pointers = pointers or {}

    def line(key, words, hypernyms, offsets):
        word_part = " ".join(f"{w} 0" for w in words)
        ptrs = [f"@ {offsets[h]} n 0000" for h in hypernyms] + [f"~ {offsets[k]} n 0000" for k in pointers.get(key, [])]
        return (f"{offsets[key]} 05 n {len(words):02x} {word_part} {len(ptrs):03d} {' '.join(ptrs)} | "
                f"a gloss about {words[0]}; \"quoted\"\n").replace("  |", " |")

    dummy = {key: "0" * 8 for key, _, _ in synsets}
    offsets, at = {}, sum(len(h) + 1 for h in HEADER)
    for key, words, hypernyms in synsets:
        offsets[key] = f"{at:08d}"
        at += len(line(key, words, hypernyms, dummy).encode())
    text = "".join(h + "\n" for h in HEADER) + "".join(line(k, w, h, offsets) for k, w, h in synsets)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.noun").write_text(text)
    return {key: f"n{offset}" for key, offset in offsets.items()}


@pytest.fixture
def noun(tmp_path):
    ids = write_noun_file(tmp_path / "wordnet")
    return tmp_path / "wordnet", ids


def test_the_parser_reads_words_and_hypernyms_at_the_byte_offsets(noun):
    folder, ids = noun
    db = NounDatabase(folder)
    dog = db.synset(ids["dog"])
    assert dog.words == ("dog", "domestic_dog") and dog.hypernyms == (ids["canine"], ids["domestic_animal"])
    assert db.synset(ids["persian"]).name == "Persian cat" and db.synset(ids["entity"]).hypernyms == ()


def test_chains_of_single_children_are_merged_away_and_the_first_hypernym_is_taken(noun):
    folder, ids = noun
    tree = build_tree(NounDatabase(folder), [ids[c] for c in CLASSES])
    name = {wnid: key for key, wnid in ids.items()}
    assert name[tree.root] == "object"  # entity and physical_entity had one child each
    shape = {name[node]: [name[kid] for kid in kids] for node, kids in tree.children.items()}
    assert shape == {"object": ["animal", "artifact", "rock"], "animal": ["carnivore", "bird"],
                     "carnivore": ["dog", "cat"], "dog": ["poodle", "terrier"], "cat": ["tabby", "persian"],
                     "bird": ["robin", "jay"], "artifact": ["vehicle", "teddy"], "vehicle": ["car", "bus", "bike"]}
    assert tree.choices == [(ids["dog"], ids["canine"], (ids["domestic_animal"],))]
    paths = [[name[n] for n in path] for path in tree.paths()]
    assert paths[0] == ["object", "animal", "carnivore", "dog", "poodle"]
    assert paths[CLASSES.index("teddy")] == ["object", "artifact", "teddy"]
    assert paths[CLASSES.index("rock")] == ["object", "rock"]


@pytest.mark.parametrize("k, expected", [
    (2, [["poodle", "terrier", "tabby", "persian", "robin", "jay"], ["car", "bus", "bike", "teddy", "rock"]]),
    (3, [["poodle", "terrier", "tabby", "persian", "robin", "jay"], ["car", "bus", "bike", "teddy"], ["rock"]]),
    (4, [["poodle", "terrier", "tabby", "persian"], ["robin", "jay"], ["car", "bus", "bike", "teddy"], ["rock"]]),
    # carnivore and artifact both hold 4: the first in tree order is split
    (5, [["poodle", "terrier"], ["tabby", "persian"], ["robin", "jay"], ["car", "bus", "bike", "teddy"], ["rock"]]),
    (6, [["poodle", "terrier"], ["tabby", "persian"], ["robin", "jay"], ["car", "bus", "bike"], ["teddy"], ["rock"]]),
    # vehicle's three children would overshoot 7: the first stays, the other two are one group
    (7, [["poodle", "terrier"], ["tabby", "persian"], ["robin", "jay"], ["car"], ["bus", "bike"], ["teddy"], ["rock"]]),
])
def test_the_cut_splits_the_largest_group_until_there_are_k(noun, k, expected):
    folder, ids = noun
    tree = build_tree(NounDatabase(folder), [ids[c] for c in CLASSES])
    groups = balanced_cut(tree, k)
    name = {wnid: key for key, wnid in ids.items()}
    assert [[name[leaf] for node in g.nodes for leaf in tree.leaves(node)] for g in groups] == expected
    labels = coarse_labels(tree, groups)
    assert [sorted(c for c, label in zip(CLASSES, labels) if label == g) for g in range(k)] == \
        [sorted(group) for group in expected]


def test_the_cut_does_not_depend_on_the_order_of_the_classes(noun):
    folder, ids = noun
    db = NounDatabase(folder)
    wnids = [ids[c] for c in CLASSES]
    reordered = build_tree(db, wnids[::-1])
    for k in range(2, 8):
        assert [g.nodes for g in balanced_cut(reordered, k)] == [g.nodes for g in balanced_cut(build_tree(db, wnids), k)]


def test_children_under_the_mean_size_are_packed_beside_a_large_one(tmp_path):
    """root -> A (4 classes in A1, A2) and three single classes; K = 3, mean size 7/3: the singles are
    packed into one rest group, so A can be split (without packing the cut would be A, s1, s2 + s3)."""
    synsets = [("root", ["root"], []), ("A", ["A"], ["root"]), ("A1", ["A1"], ["A"]), ("A2", ["A2"], ["A"]),
               ("a1", ["a1"], ["A1"]), ("a2", ["a2"], ["A1"]), ("a3", ["a3"], ["A2"]), ("a4", ["a4"], ["A2"]),
               ("s1", ["s1"], ["root"]), ("s2", ["s2"], ["root"]), ("s3", ["s3"], ["root"])]
    ids = write_noun_file(tmp_path / "wn", synsets)
    classes = ["a1", "a2", "a3", "a4", "s1", "s2", "s3"]
    tree = build_tree(NounDatabase(tmp_path / "wn"), [ids[c] for c in classes])
    name = {wnid: key for key, wnid in ids.items()}
    groups = balanced_cut(tree, 3)
    assert [[name[leaf] for node in g.nodes for leaf in tree.leaves(node)] for g in groups] == \
        [["a1", "a2"], ["a3", "a4"], ["s1", "s2", "s3"]]
    assert [g.name for g in groups] == ["A1", "A2", "root (rest)"]
    split = balanced_cut(tree, 5)  # the rest group is split into its members when it is the largest
    assert sorted(len(tree.leaves(g.nodes[0])) for g in split if len(g.nodes) == 1) == [1, 1, 1, 2, 2]


def test_overshooting_groups_are_named_after_their_parent(noun):
    folder, ids = noun
    tree = build_tree(NounDatabase(folder), [ids[c] for c in CLASSES])
    assert [g.name for g in balanced_cut(tree, 2)] == ["animal", "object (rest)"]
    assert [g.name for g in balanced_cut(tree, 7)] == ["dog", "cat", "bird", "car", "vehicle (rest)", "teddy", "rock"]


def test_a_name_two_groups_share_gets_their_wnids(tmp_path):
    synsets = [("entity", ["entity"], []), ("organ1", ["organ"], ["entity"]), ("organ2", ["organ"], ["entity"]),
               ("heart", ["heart"], ["organ1"]), ("lung", ["lung"], ["organ1"]),
               ("pipe_organ", ["pipe_organ"], ["organ2"]), ("reed_organ", ["reed_organ"], ["organ2"])]
    ids = write_noun_file(tmp_path / "wn", synsets)
    tree = build_tree(NounDatabase(tmp_path / "wn"), [ids[k] for k in ("heart", "lung", "pipe_organ", "reed_organ")])
    assert [g.name for g in balanced_cut(tree, 2)] == [f"organ ({ids['organ1']})", f"organ ({ids['organ2']})"]


def test_a_class_above_another_class_is_a_leaf_of_its_own_node(noun):
    folder, ids = noun
    classes = ["poodle", "dog", "terrier", "tabby", "rock"]
    tree = build_tree(NounDatabase(folder), [ids[c] for c in classes])
    paths = tree.paths()
    assert paths[1][-2:] == [f"{ids['dog']}+", ids["dog"]]  # dog: a leaf under the dog synset's node
    assert paths[0][-2:] == [f"{ids['dog']}+", ids["poodle"]]
    assert sorted(tree.children[f"{ids['dog']}+"]) == sorted([ids["poodle"], ids["dog"], ids["terrier"]])
    groups = balanced_cut(tree, 5)
    assert sorted(len(tree.leaves(g.nodes[0])) for g in groups) == [1] * 5  # every class its own group


def write_imagenet_of(root: Path, wnids: list[str]) -> Path:
    for c, wnid in enumerate(wnids):
        for split, count in (("train", 2), ("val", 1)):
            for i in range(count):
                path = root / split / wnid / f"{wnid}_{i}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((12, 12, 3), 20 * c, np.uint8)).save(path)
    return root


def test_an_imagenet_folder_gets_the_cut_as_coarse_labels_and_the_oracle_uses_it(noun, tmp_path):
    from ccn.hierarchy import oracle_partition

    folder, ids = noun
    root = write_imagenet_of(tmp_path / "imagenet", [ids[c] for c in CLASSES])
    ds = load_dataset(DataConfig(name="imagenet", root=str(root), image_size=8, wordnet=str(folder),
                                 wordnet_groups=4, cache=False))
    by_class = dict(zip(ds.class_ids, range(len(ds.class_ids))))  # the reader sorts the wnids
    groups = sorted(sorted(ds.class_ids[c] for c in g) for g in oracle_partition(ds.coarse, ds.name))
    expected = [["poodle", "terrier", "tabby", "persian"], ["robin", "jay"], ["car", "bus", "bike", "teddy"], ["rock"]]
    assert groups == sorted(sorted(ids[c] for c in g) for g in expected)
    assert sorted(ds.coarse_names) == ["artifact", "bird", "carnivore", "rock"]
    poodle = ds.tree_paths[by_class[ids["poodle"]]]
    assert poodle == [ids[k] for k in ("object", "animal", "carnivore", "dog", "poodle")]
    default = load_dataset(DataConfig(name="imagenet", root=str(root), image_size=8, wordnet=str(folder), cache=False))
    assert len(set(default.coarse)) == 3  # round(sqrt(11))


def test_an_oracle_run_trains_on_the_wordnet_groups_and_clusters_shows_them(noun, tmp_path):
    folder, ids = noun
    root = write_imagenet_of(tmp_path / "imagenet", [ids[c] for c in CLASSES])
    out = tmp_path / "run"
    done = run_cli("train", "--out", str(out), *[a for s in [
        "data.name=imagenet", f"data.root={root}", "data.image_size=8", f"data.wordnet={folder}",
        "data.wordnet_groups=4", "data.cache=false", "model.width=4", "train.epochs=2", "train.batch_size=8",
        "train.progress=false", "method.partition=oracle"] for a in ("--set", s)])
    assert done.returncode == 0, done.stderr
    how = json.loads((out / "hierarchy.json").read_text())["how"]
    assert how["partition"] == "oracle" and how["sizes"] == [4, 4, 2, 1] and how["coarse_ari"] == 1.0
    shown = run_cli("clusters", str(out))
    assert shown.returncode == 0 and "4 oracle groups of 11 classes" in shown.stdout
    assert f"(2): {ids['robin']}, {ids['jay']}" in shown.stdout  # no words file: the wnids are the names
    moved = folder.rename(tmp_path / "moved-wordnet")  # a run's WordNet folder is a place, like data.root
    scored = run_cli("evaluate", str(out), "--set", f"data.wordnet={moved}")
    assert scored.returncode == 0, scored.stderr


def test_the_groups_file_is_a_depth_two_tree_that_runs_and_clusters_read(noun, tmp_path):
    from ccn.hierarchy import Hierarchy, read_groups_file

    folder, ids = noun
    root = write_imagenet_of(tmp_path / "imagenet", [ids[c] for c in CLASSES])
    out = tmp_path / "groups.json"
    args = ["data.name=imagenet", f"data.root={root}", "data.image_size=8", f"data.wordnet={folder}",
            "data.wordnet_groups=3", "data.cache=false"]
    done = run_cli("wordnet", *[a for s in args for a in ("--set", s)], "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "3 wordnet groups of 11 classes" in done.stdout and " animal (6)" in done.stdout
    assert "first listed hypernym was taken at 1 synset(s) with several: dog -> canine (not domestic animal)" \
        in done.stdout
    h = Hierarchy.load(out)
    ds = load_dataset(cfgmod.load(None, args).data)
    name = {wnid: key for key, wnid in ids.items()}
    named = [[[name[ds.class_ids[c]] for c in sub] if isinstance(sub, list) else name[ds.class_ids[sub]]
              for sub in group] for group in h.tree]
    assert named == [[["poodle", "terrier", "tabby", "persian"], ["robin", "jay"]],
                     [["car", "bus", "bike"], ["teddy"]], ["rock"]]
    assert h.how["group_names"] == ["animal", "artifact", "rock"]
    deep = read_groups_file(out, ds.classes, whole_tree=True, class_ids=ds.class_ids)
    assert [[sorted(s) for s in g] if isinstance(g[0], list) else g for g in deep] == \
        [[sorted(s) for s in g] if isinstance(g[0], list) else g for g in h.tree]
    assert sorted(map(sorted, read_groups_file(out, ds.classes, whole_tree=False))) == sorted(h.groups)
    shown = run_cli("clusters", str(out))
    assert shown.returncode == 0 and "group  1 animal (6)" in shown.stdout and "      - " in shown.stdout


def test_the_real_noun_file_finds_every_tiny_imagenet_class(tmp_path):
    archive = SHARED_DATA / "wordnet-3.0.tar.xz"
    if not archive.is_file():
        pytest.skip(f"the WordNet archive is not at {archive} (set CCN_SHARED_DATA to the shared data folder)")
    subprocess.run(["bash", str(SHARED_DATA / "unpack.sh"), str(tmp_path), "wordnet"], check=True, capture_output=True)
    wnids = (Path(__file__).parent / "data" / "tiny_imagenet_wnids.txt").read_text().split()
    assert len(wnids) == 200
    db = NounDatabase(tmp_path / "wordnet")
    tree = build_tree(db, wnids)
    assert db.synset(tree.root).name == "physical entity"  # entity has one child here: merged away
    assert all(len(kids) > 1 for kids in tree.children.values())
    whole = next(wnid for wnid in tree.children if db.synset(wnid).words[0] == "whole")
    assert len(tree.leaves(whole)) > 150  # the lopsided node the cut must split (178 of 200 by first hypernyms)
    for k in (10, 14, 20, 30):
        groups = balanced_cut(tree, k)
        labels = coarse_labels(tree, groups)
        assert len(groups) == k and sorted(set(labels)) == list(range(k))
        assert max(np.bincount(labels)) < 182 / 2
    assert len(two_level_tree(tree, balanced_cut(tree, 14))) == 14
    paths = tree.paths()
    assert [p[-1] for p in paths] == wnids and all(p[0] == tree.root for p in paths)


# ---------------------------------------------------------------- bad input (docs/bad-input.md)


def test_a_folder_without_data_noun_is_one_line(tmp_path):
    with pytest.raises(DataError, match="holds no data.noun: give data.wordnet the folder"):
        NounDatabase(tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        NounDatabase(tmp_path / "missing")


def test_a_noun_file_that_is_no_regular_file_or_too_large_is_refused(tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "data.noun")
    with pytest.raises(DataError, match="is not a regular file"):
        NounDatabase(tmp_path)
    other = tmp_path / "big"
    write_noun_file(other)
    monkeypatch.setattr(wordnet, "MAX_NOUN_BYTES", 100)
    with pytest.raises(DataError, match="more than the 100 WordNet's data.noun may have"):
        NounDatabase(other)


@pytest.mark.parametrize("wnid, message", [
    ("dog", "is not a WordNet noun id"),
    ("n99999999", "no synset line starts at byte 99999999"),
    ("n00000001", "no synset line starts at byte 1"),  # inside the licence header
    ("n00000000", "no synset line starts at byte 0"),  # the header's first line
])
def test_an_id_that_is_not_a_synset_names_the_id(noun, wnid, message):
    folder, ids = noun
    with pytest.raises(DataError, match=f"class id {wnid} .*{message}"):
        build_tree(NounDatabase(folder), [ids["poodle"], wnid])


def test_an_offset_inside_a_line_is_refused(noun):
    folder, ids = noun
    inside = f"n{int(ids['dog'][1:]) + 9:08d}"
    with pytest.raises(DataError, match=f"class id {inside} is not in .*no synset line starts"):
        NounDatabase(folder).synset(inside)


@pytest.mark.parametrize("damage", ["count", "offset", "pointer"])
def test_a_malformed_line_is_one_line_naming_the_id(noun, damage):
    folder, ids = noun
    path = folder / "data.noun"
    data = path.read_bytes()
    start = int(ids["dog"][1:])
    line = data[start:data.index(b"\n", start)]
    broken = {"count": line.replace(b" 02 dog", b" 09 dog"),  # more words announced than given
              "offset": line.replace(ids["dog"][1:].encode(), b"00000042", 1),
              "pointer": line.replace(b"@ " + ids["canine"][1:].encode(), b"@ 12x45678")}[damage]
    assert broken != line and len(broken) == len(line)
    path.write_bytes(data.replace(line, broken))
    with pytest.raises(DataError, match=fr"{ids['dog']} \(a hypernym of {ids['poodle']}\).*is not a WordNet data line"):
        build_tree(NounDatabase(folder), [ids["poodle"], ids["rock"]])


def test_damaged_bytes_give_a_tree_or_one_data_error(noun):
    """A few bytes changed anywhere in data.noun (seeded): the tree is built, or one DataError, never
    another exception."""
    folder, ids = noun
    path = folder / "data.noun"
    original = path.read_bytes()
    generator = np.random.default_rng(0)
    alphabet = np.frombuffer(b"0123456789abcdef @n|-+_ \n\xff", np.uint8)
    outcomes = set()
    for _ in range(300):
        data = np.frombuffer(original, np.uint8).copy()
        at = generator.integers(0, len(data), size=generator.integers(1, 4))
        data[at] = generator.choice(alphabet, size=len(at))
        path.write_bytes(data.tobytes())
        try:
            build_tree(NounDatabase(folder), [ids[c] for c in CLASSES])
            outcomes.add("tree")
        except DataError as err:
            assert "\n" not in str(err)
            outcomes.add("refused")
    assert outcomes == {"tree", "refused"}


def test_hypernyms_in_a_circle_are_refused(tmp_path):
    ids = write_noun_file(tmp_path / "wn", [("a", ["a"], ["b"]), ("b", ["b"], ["a"]), ("c", ["c"], ["a"])])
    with pytest.raises(DataError, match="go round in a circle"):
        build_tree(NounDatabase(tmp_path / "wn"), [ids["c"], ids["b"]])


def test_classes_under_two_roots_are_refused(tmp_path):
    ids = write_noun_file(tmp_path / "wn", [("a", ["a"], []), ("b", ["b"], []), ("c", ["c"], ["a"]), ("d", ["d"], ["b"])])
    with pytest.raises(DataError, match="the classes' hypernyms reach 2 roots"):
        build_tree(NounDatabase(tmp_path / "wn"), [ids["c"], ids["d"]])


def test_a_chain_deeper_than_the_recursion_limit_is_merged_away(tmp_path):
    depth = 3 * sys.getrecursionlimit()
    chain = [("s0", ["s0"], [])] + [(f"s{i}", [f"s{i}"], [f"s{i - 1}"]) for i in range(1, depth)]
    ids = write_noun_file(tmp_path / "wn", chain + [("x", ["x"], [f"s{depth - 1}"]), ("y", ["y"], [f"s{depth - 1}"])])
    tree = build_tree(NounDatabase(tmp_path / "wn"), [ids["x"], ids["y"]])
    assert tree.root == ids[f"s{depth - 1}"] and tree.paths() == [[tree.root, ids["x"]], [tree.root, ids["y"]]]


def test_a_data_set_without_wordnet_ids_is_refused(noun):
    folder, _ = noun
    with pytest.raises(DataError, match="data.wordnet needs class ids that are WordNet ids .*data.name=digits has none"):
        load_dataset(DataConfig(name="digits", wordnet=str(folder)))


def test_more_groups_than_classes_or_groups_without_wordnet_are_refused(noun):
    folder, ids = noun
    with pytest.raises(DataError, match="data.wordnet_groups=12 is more than the 11 classes"):
        wordnet.wordnet_hierarchy([ids[c] for c in CLASSES], folder, 12)
    with pytest.raises(ConfigError, match="data.wordnet_groups=4 cuts the WordNet tree.*set data.wordnet"):
        cfgmod.load(None, ["data.wordnet_groups=4"])
    with pytest.raises(ConfigError, match="data.wordnet_groups must be"):
        cfgmod.load(None, [f"data.wordnet={folder}", "data.wordnet_groups=0"])


def test_the_wordnet_command_needs_the_folder_and_keeps_an_existing_file(tmp_path):
    done = run_cli("wordnet", "--set", "data.name=digits")
    assert done.returncode == 2 and "ccn wordnet needs data.wordnet=FOLDER" in done.stderr
    out = tmp_path / "groups.json"
    out.write_text("mine")
    done = run_cli("wordnet", "--set", f"data.wordnet={tmp_path}", "--out", str(out))
    assert done.returncode == 2 and "exists: choose another file, or pass --force" in done.stderr
    assert out.read_text() == "mine"
    done = run_cli("clusters", str(out), "--plot")
    assert done.returncode == 2 and "--plot draws a run's class distances" in done.stderr


@pytest.mark.parametrize("key, value", [("wordnet", "elsewhere"), ("wordnet_groups", 20)])
def test_a_grid_variant_with_its_own_wordnet_cut_is_refused(tmp_path, key, value):
    """Every variant of a grid is scored against one true hierarchy: a variant's own cut would make its
    agreement with the truth (and an oracle variant's groups) incomparable with the others'."""
    import yaml

    from ccn.grid import load_grid

    base = {"data": {"name": "digits", "wordnet": str(tmp_path)}, "train": {"epochs": 2}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"base": base, "variants": {"flat": None, "oracle": {
        "method": {"name": "ccn", "partition": "oracle"}, "data": {key: value}}}, "seeds": [0]}))
    with pytest.raises(ConfigError, match=f"variant 'oracle' sets data.{key}, which gives its runs another "
                                          f".*true hierarchy.*set data.{key} in base:"):
        load_grid(path)
    path.write_text(yaml.safe_dump({"base": {**base, "data": {**base["data"], "wordnet_groups": 20}}, "variants": {
        "flat": None, "oracle": {"method": {"name": "ccn", "partition": "oracle"}}}, "seeds": [0]}))
    assert load_grid(path).config_for("oracle", 0).data.wordnet_groups == 20

