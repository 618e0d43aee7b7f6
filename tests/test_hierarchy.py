import json
import numpy as np
import pytest
import torch

from ccn.errors import ConfigError, DataError
from ccn.hierarchy import (METRICS, Hierarchy, agreement, build_hierarchy, class_distances, class_profiles,
                           oracle_partition, random_partition)
from ccn.hierarchy.clustering import enforce_sizes, learned_partition


def planted_profiles(groups, noise=0.02, seed=0):
    """Profiles where classes of a group send their mass to the same classes."""
    rng = np.random.default_rng(seed)
    c = sum(len(g) for g in groups)
    S = np.full((c, c), 0.01)
    for g in groups:
        for i in g:
            S[i, g] += 1.0
    S += noise * rng.random((c, c))
    return S / S.sum(1, keepdims=True)


def test_profiles_are_mean_softmax_per_class():
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]])
    S = class_profiles(probs, torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(S, torch.tensor([[0.8, 0.2], [0.2, 0.8]], dtype=torch.float64))


def test_missing_class_in_probe_set():
    with pytest.raises(DataError, match="no image of classes \\[2\\]"):
        class_profiles(torch.rand(4, 3), torch.tensor([0, 1, 0, 1]), 3)


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_metrics_are_symmetric_zero_diagonal_and_recover_planted_groups(metric):
    groups = [[0, 4, 7], [1, 2, 8, 9], [3, 5, 6]]
    D = class_distances(planted_profiles(groups), metric)
    assert np.allclose(D, D.T) and np.allclose(np.diag(D), 0) and (D >= 0).all()
    h = build_hierarchy(planted_profiles(groups), [str(i) for i in range(10)], metric=metric, num_groups=3)
    assert sorted(h.groups) == sorted(groups)


def test_l1_is_the_sum_of_absolute_differences():
    S = np.array([[0.5, 0.5, 0.0], [0.1, 0.2, 0.7]])
    assert class_distances(S, "l1")[0, 1] == pytest.approx(0.4 + 0.3 + 0.7)


def test_cut_gives_exactly_k_groups_and_threshold_works():
    S = planted_profiles([[0, 1], [2, 3], [4, 5], [6, 7]])
    for k in range(1, 9):
        parts, _ = learned_partition(class_distances(S), num_groups=k)
        assert len(parts) == k and sorted(c for g in parts for c in g) == list(range(8))
    parts, _ = learned_partition(class_distances(S), threshold=0.5)
    assert sorted(parts) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(ValueError, match="num_groups=9 is impossible with 8 classes"):
        learned_partition(class_distances(S), num_groups=9)  # a run is refused before (ccn.plan)


def test_size_bounds():
    S = planted_profiles([[0, 1, 2, 3, 4, 5], [6], [7, 8]])
    D = class_distances(S)
    parts = enforce_sizes([[0, 1, 2, 3, 4, 5], [6], [7, 8]], D, min_size=2, max_size=4)
    assert all(2 <= len(g) <= 4 for g in parts) and sorted(c for g in parts for c in g) == list(range(9))


def test_random_partition_keeps_sizes_and_is_seeded():
    a = random_partition(10, [5, 3, 2], seed=1)
    assert sorted(map(len, a)) == [2, 3, 5] and sorted(c for g in a for c in g) == list(range(10))
    assert random_partition(10, [5, 3, 2], seed=1) == a != random_partition(10, [5, 3, 2], seed=2)


def test_oracle_partition():
    assert oracle_partition([0, 1, 0, 2]) == [[0, 2], [1], [3]]
    with pytest.raises(ConfigError, match="needs coarse labels"):
        oracle_partition(None, "digits")


def test_hierarchy_json_round_trip_and_mask(tmp_path):
    h = build_hierarchy(planted_profiles([[0, 2], [1, 3]]), ["a", "b", "c", "d"], num_groups=2)
    h.save(tmp_path / "h.json")
    back = Hierarchy.load(tmp_path / "h.json")
    assert back.groups == h.groups == [[0, 2], [1, 3]] and back.named_groups() == [["a", "c"], ["b", "d"]]
    assert np.allclose(back.merges, h.merges) and back.how["metric"] == "l1"
    assert back.mask().tolist() == [[True, False, True, False], [False, True, False, True]]
    deep = Hierarchy(["a", "b", "c", "d"], [[[0], [2]], [1, 3]])
    assert deep.depth == 2 and Hierarchy.from_json(deep.to_json()).tree == deep.tree


def test_agreement_scores():
    assert agreement([[0, 1], [2, 3]], [0, 0, 1, 1], 4)["ari"] == pytest.approx(1.0)
    assert agreement([[0, 2], [1, 3]], [0, 0, 1, 1], 4)["ari"] < 0


def test_the_group_count_is_num_groups_and_old_files_still_read(tmp_path):
    """One word, one meaning (issue 21): `groups` is a list of class lists; the count is `num_groups`
    (method.groups stays the config key: the number of groups K). hierarchy.json files written
    before the rename, with how["groups"] = K, read back with the count under its new name."""
    h = build_hierarchy(planted_profiles([[0, 2], [1, 3]]), ["a", "b", "c", "d"], num_groups=2)
    assert h.how["num_groups"] == len(h.groups) == 2 and "groups" not in h.how
    h.save(tmp_path / "hierarchy.json")
    data = json.loads((tmp_path / "hierarchy.json").read_text())
    data["how"]["groups"] = data["how"].pop("num_groups")  # as an older ccn wrote it (format 0)
    del data["format"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = Hierarchy.load(tmp_path / "old.json")
    assert old.how["num_groups"] == 2 and "groups" not in old.how and old.groups == h.groups
