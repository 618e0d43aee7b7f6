"""The partitions step 2 can give the method: balanced, prior-corrected, a file the user brings,
and the size rules, each against a planted structure it must recover."""

import json

import numpy as np
import pytest

from ccn.config import MethodConfig
from ccn.errors import ConfigError
from ccn.hierarchy import (agreement, balanced_partition, build_hierarchy, choose_partition, class_distances,
                           prior_corrected, read_groups_file)
from ccn.hierarchy.clustering import enforce_sizes

PLANTED = [list(range(k * 4, k * 4 + 4)) for k in range(4)]  # 16 classes in 4 groups of 4
NAMES = [f"class{c}" for c in range(16)]


def planted_profiles(seed: int, popular=(0, 4)) -> np.ndarray:
    """One-epoch-like profiles: 80 % of every row goes to two popular classes in random proportions,
    20 % stays inside the planted group; the popular classes' own rows are confident."""
    rng = np.random.default_rng(seed)
    S = np.zeros((16, 16))
    for group in PLANTED:
        for c in group:
            S[c, list(popular)] = 0.8 * rng.dirichlet([0.5, 0.5])
            S[c, group] += 0.2 / len(group)
    for p in popular:
        S[p] = 0.05 / 16
        S[p, p] += 0.95
    return S / S.sum(1, keepdims=True)


def ari(groups) -> float:
    return agreement(groups, PLANTED, 16)["ari"]


def test_prior_correction_recovers_groups_that_popular_predictions_hide():
    raw = [ari(build_hierarchy(planted_profiles(s), NAMES, num_groups=4).groups) for s in range(5)]
    fixed = [ari(build_hierarchy(planted_profiles(s), NAMES, num_groups=4, profile="prior").groups) for s in range(5)]
    assert np.mean(raw) < 0.4 < 0.7 < np.mean(fixed), (raw, fixed)


def test_prior_correction_divides_out_the_column_prior():
    S = planted_profiles(0)
    corrected = prior_corrected(S)
    assert np.allclose(corrected.sum(1), 1)
    ratio = S / S.mean(0)  # by hand: each column over its class-balanced mean, rows renormalised
    assert np.allclose(corrected, ratio / ratio.sum(1, keepdims=True))


def test_balanced_groups_have_equal_sizes_and_keep_close_classes_together():
    D = class_distances(np.eye(16)[sum(([k] * 4 for k in range(4)), [])] + 0.01 * np.random.default_rng(0).random((16, 4)) @ np.ones((4, 16)))
    bad_start = [list(range(0, 13)), [13], [14], [15]]  # a blob and three singletons
    groups = balanced_partition(D, 4, bad_start)
    assert sorted(map(len, groups)) == [4, 4, 4, 4]
    assert ari(groups) == pytest.approx(1.0)


@pytest.mark.parametrize("num_classes,k", [(101, 10), (10, 3), (7, 7), (30, 4)])
def test_balanced_sizes_lie_within_a_factor_two_of_the_mean(num_classes, k):
    rng = np.random.default_rng(num_classes)
    S = rng.dirichlet(np.ones(num_classes) * 0.3, size=num_classes)
    h = build_hierarchy(S, [str(c) for c in range(num_classes)], num_groups=k, clustering="balanced")
    sizes = [len(g) for g in h.groups]
    assert len(sizes) == k and sum(sizes) == num_classes and max(sizes) - min(sizes) <= 1
    mean = num_classes / k
    assert mean / 2 <= min(sizes) and max(sizes) <= 2 * mean
    assert h.how["clustering"] == "balanced"


def test_merging_small_groups_never_breaks_the_largest_size():
    D = np.full((6, 6), 10.0)
    np.fill_diagonal(D, 0)
    D[5, :3] = D[:3, 5] = 1.0  # class 5 is closest to the full group {0, 1, 2}
    groups = enforce_sizes([[0, 1, 2], [3, 4], [5]], D, min_size=2, max_size=3)
    assert max(map(len, groups)) <= 3 and min(map(len, groups)) >= 2
    with pytest.raises(ConfigError, match="min_group_size=4 and method.max_group_size=4 cannot both hold"):
        enforce_sizes([[0, 1, 2], [3, 4], [5]], D, min_size=4, max_size=4)  # 6 classes: one group of 4 at most


def test_random_control_takes_the_sizes_of_the_partition_it_controls():
    S = planted_profiles(1)
    meth = MethodConfig(groups=4, clustering="balanced", partition="random")
    h = choose_partition(meth, S, NAMES, seed=3)
    assert sorted(map(len, h.groups)) == [4, 4, 4, 4] and h.how["partition"] == "random"
    assert h.how["sizes"] == [4, 4, 4, 4] and h.how["balance"]["largest_over_mean"] == 1.0


# ---------------------------------------------------------------- a partition the user brings


def nbdt_graph(tree, names) -> dict:
    """An NBDT-style node-link graph of a nested-list tree of class indices."""
    nodes, links = [], []

    def add(node, path):
        node_id = f"n{path}"
        label = names[node] if not isinstance(node, list) else f"inner{path}"
        nodes.append({"id": node_id, "label": label})
        if isinstance(node, list):
            for i, child in enumerate(node):
                links.append({"source": node_id, "target": add(child, f"{path}.{i}")})
        return node_id

    add(tree, "0")
    return {"directed": True, "multigraph": False, "graph": {}, "nodes": nodes, "links": links}


def test_nbdt_graph_gives_the_roots_children_at_depth_one_and_the_tree_deeper(tmp_path):
    tree = [[[0, 1], [2, 3]], [[4, 5, 6, 7]], [[8, 9], [10, 11, 12, 13, 14, 15]]]
    path = tmp_path / "graph-induced.json"
    path.write_text(json.dumps(nbdt_graph(tree, NAMES)))
    groups = read_groups_file(path, NAMES, whole_tree=False)
    assert groups == [[0, 1, 2, 3], [4, 5, 6, 7], list(range(8, 16))]
    whole = read_groups_file(path, NAMES, whole_tree=True)
    assert whole == [[[0, 1], [2, 3]], [4, 5, 6, 7], [[8, 9], [10, 11, 12, 13, 14, 15]]]  # one-child chain collapsed


def test_groups_file_from_our_own_hierarchy_json(tmp_path):
    h = build_hierarchy(planted_profiles(2), NAMES, num_groups=4, profile="prior")
    h.save(tmp_path / "hierarchy.json")
    meth = MethodConfig(partition="file", groups_file=str(tmp_path / "hierarchy.json"))
    shuffled = NAMES[::-1]  # matched by name, not by index
    chosen = choose_partition(meth, planted_profiles(2)[::-1, ::-1], shuffled, seed=0)
    assert sorted(sorted(shuffled[c] for c in g) for g in chosen.groups) == sorted(sorted(g) for g in h.named_groups())
    assert chosen.how["partition"] == "file"


def test_groups_file_with_other_class_names_is_one_clear_error(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(nbdt_graph([[0, 1], [2, 3]], ["cat", "dog", "car", "tuck"])))
    with pytest.raises(ConfigError, match=r"not classes of this data set: tuck; classes missing from the file: truck"):
        read_groups_file(path, ["cat", "dog", "car", "truck"], whole_tree=False)
    with pytest.raises(ConfigError, match="is missing"):
        read_groups_file(tmp_path / "nope.json", ["a"], whole_tree=False)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        read_groups_file(tmp_path / "bad.json", ["a"], whole_tree=False)


def test_a_groups_file_that_does_not_fit_stops_the_run_before_training(tmp_path):
    """A missing or mismatched groups file is found at start-up (not after the probe epochs), and
    the run folder is left as if nothing had been run."""
    from conftest import run_cli
    path = tmp_path / "g.json"
    path.write_text(json.dumps(nbdt_graph([[0, 1], [2, 3]], ["cat", "dog", "car", "truck"])))
    result = run_cli("train", "--set", "method.partition=file", "--set", f"method.groups_file={path}",
                     "--set", "train.epochs=3", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "does not match the data set's class names" in result.stderr
    assert "epoch" not in result.stdout and not (tmp_path / "run").exists()


def test_nbdt_imagenet_leaves_match_by_wnid_even_where_labels_repeat(tmp_path):
    """NBDT's ImageNet hierarchies give each leaf its wnid as id and a word as label, and the words
    repeat (two cranes: the bird and the machine). With the data set's wnids as class ids every leaf
    finds its class; a data set named by wnids (a plain folder of n0... folders) matches by id too."""
    wnids = ["n01440764", "n02012849", "n03126707", "n04590129", "n02963159", "n02113186"]
    names = ["tench", "crane (n02012849)", "crane (n03126707)", "window shade", "cardigan", "Cardigan"]
    labels = ["tench", "crane", "crane", "window shade", "cardigan", "cardigan"]
    planted = {"n00015388": [0, 1, 5], "n00021939": [2, 3, 4]}  # animals, artefacts (WordNet ids as inner nodes)
    nodes = [{"id": "n00001740", "label": "entity"}]
    links = []
    for inner, members in planted.items():
        nodes.append({"id": inner, "label": "animal" if inner == "n00015388" else "artifact"})
        links.append({"source": "n00001740", "target": inner})
        for c in members:
            nodes.append({"id": wnids[c], "label": labels[c]})
            links.append({"source": inner, "target": wnids[c]})
    path = tmp_path / "graph-wordnet-single.json"
    path.write_text(json.dumps({"directed": True, "multigraph": False, "graph": {}, "nodes": nodes, "links": links}))
    shuffled = [5, 3, 0, 2, 4, 1]  # the data set's order is not the file's
    expected = sorted(sorted(shuffled.index(c) for c in members) for members in planted.values())
    by_id = read_groups_file(path, [names[c] for c in shuffled], whole_tree=False, class_ids=[wnids[c] for c in shuffled])
    assert sorted(by_id) == expected
    assert sorted(read_groups_file(path, [wnids[c] for c in shuffled], whole_tree=False)) == expected
    # without ids, the repeated labels cannot be told apart: one line says which
    with pytest.raises(ConfigError, match="not classes of this data set: crane, crane"):
        read_groups_file(path, [names[c] for c in shuffled], whole_tree=False)
