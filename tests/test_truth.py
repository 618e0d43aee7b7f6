"""Scores against a data set's true hierarchy (ccn.hierarchy.truth): coarse top-1, mistake severity,
agreement of partitions with the true groups beside random ones, and the oracle-random control."""

import json

import numpy as np
import pytest
import torch

from ccn import config as cfgmod
from ccn.errors import ConfigError
from ccn.evaluate import ScoreTally
from ccn.grid import builtin_variant, load_grid
from ccn.heads import FlatHead
from ccn.hierarchy import choose_partition
from ccn.hierarchy.truth import lca_heights, partition_agreement, partition_shape, true_tree
from ccn.grid_statistics import control_pairs
from conftest import run_cli


def test_two_level_tree_heights_are_0_1_2():
    tree = true_tree([0, 0, 1, 1, 1])
    heights = tree.lca_heights()
    assert heights[0, 0] == 0 and heights[0, 1] == 1 and heights[0, 2] == 2 and heights[3, 4] == 1
    assert (heights == heights.T).all()


def test_heights_on_a_lopsided_tree_count_steps_up_from_the_true_class():
    paths = [["r", "a", "x", "c0"], ["r", "a", "x", "c1"], ["r", "a", "c2"], ["r", "c3"]]
    heights = lca_heights(paths, chunk=2)  # chunked rows give the same answer
    assert heights[0].tolist() == [0, 1, 2, 3]  # c1 a sibling, c2 two steps up, c3 only at the root
    assert heights[2].tolist() == [1, 1, 0, 2] and heights[3].tolist() == [1, 1, 1, 0]


def test_tally_counts_coarse_hits_and_the_severity_of_mistakes_only():
    head = FlatHead(4, 4)
    tree = true_tree([0, 0, 1, 1])
    labels = torch.tensor([0, 0, 2, 3])
    logits = torch.full((4, 4), -5.0)
    logits[0, 0] = logits[1, 1] = logits[2, 0] = logits[3, 3] = 5.0  # right, sibling, other group, right
    tally = ScoreTally(head, "flat", None, torch.device("cpu"), tree)
    tally.add({"z": logits}, labels)
    truth = tally.result(over_ranks=False)["truth"]
    assert truth["coarse_top1"] == pytest.approx(3 / 4)  # the sibling mistake stays in the true group
    assert truth["mistake_severity"] == pytest.approx((1 + 2) / 2)
    assert truth["coarse_groups"] == 2 and truth["tree"] == "coarse labels"
    plain = ScoreTally(head, "flat", None, torch.device("cpu"))
    plain.add({"z": logits}, labels)
    assert "truth" not in plain.result(over_ranks=False)  # no tree, no scores against one


def test_agreement_sits_beside_random_partitions_of_the_same_sizes():
    coarse = [c % 5 for c in range(50)]
    true_groups = [[c for c in range(50) if c % 5 == k] for k in range(5)]
    found = partition_agreement(true_groups, coarse)
    assert found["coarse_ari"] == pytest.approx(1.0) and found["coarse_nmi"] == pytest.approx(1.0)
    chance = found["coarse_random"]
    assert abs(chance["ari_mean"]) < 0.1 and 0 < chance["nmi_mean"] < 0.3 and chance["draws"] == 20
    assert partition_agreement(true_groups, coarse) == found  # the baseline is seeded


def test_partition_shape_names_one_big_group_plus_singletons():
    assert partition_shape([84] + [1] * 9)["shape"] == "one big group (84 of 93 classes) plus 9 singletons"
    assert partition_shape([70, 2] + [1] * 8)["shape"].endswith("plus 8 singletons and 1 other small group")
    assert partition_shape([5, 4, 4])["shape"].startswith("balanced")
    assert partition_shape([8, 3, 1])["shape"] == "3 groups of 1-8 classes, 1 singleton"


def test_oracle_random_takes_the_oracle_sizes_and_other_classes():
    coarse = [0] * 6 + [1] * 3 + [2] * 3  # unequal true groups: sizes 6, 3, 3
    profiles = torch.softmax(torch.randn(12, 12, generator=torch.Generator().manual_seed(0)), dim=1)
    meth = cfgmod.from_dict({"method": {"partition": "random", "random_sizes": "oracle", "groups": 2}}).method
    classes = [f"c{i}" for i in range(12)]
    h = choose_partition(meth, profiles, classes, seed=3, coarse=coarse)
    assert sorted(len(g) for g in h.groups) == [3, 3, 6]
    assert h.how["sizes_of"] == "the data set's coarse labels" and h.how["coarse_ari"] < 1.0
    assert "learned_coarse" in h.how  # how close the learned groups (K=2) came, recorded beside
    learned = choose_partition(cfgmod.from_dict({"method": {"partition": "random", "groups": 2}}).method,
                               profiles, classes, seed=3, coarse=coarse)
    assert sorted(len(g) for g in learned.groups) != [3, 3, 6]  # today's random copies the learned sizes


def test_random_sizes_only_with_a_random_partition():
    with pytest.raises(ConfigError, match="method.random_sizes=oracle only applies when method.partition=random"):
        cfgmod.from_dict({"method": {"random_sizes": "oracle"}})


def test_oracle_random_variants_and_their_control_pairs(tmp_path):
    assert builtin_variant("oracle-random")["method"] == {"name": "ccn", "partition": "random",
                                                          "random_sizes": "oracle"}
    assert builtin_variant("oracle-random-norm")["method"]["normalize_loss"] is True
    pairs = control_pairs(["flat", "oracle-norm", "oracle-random-norm", "ccn-norm"])
    assert pairs == {"oracle-norm_vs_oracle-random-norm": ("oracle-norm", "oracle-random-norm")}
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {data: {name: synthetic}, method: {random_sizes: oracle, partition: random}}\n"
                    "variants: [ccn]\nseeds: [0]\nreference: ccn\n")
    with pytest.raises(ConfigError, match="variant 'ccn' is built in with method.partition=learned"):
        load_grid(grid)


GRID = """
base:
  data: {name: synthetic, num_classes: 8, num_groups: 2, train_per_class: 20, test_per_class: 8}
  model: {name: fastnet, width: 4}
  train: {epochs: 2, batch_size: 32, progress: false}
  method: {groups: 2}
variants: [flat, oracle-norm, oracle-random-norm]
seeds: [0, 1]
"""


def test_a_grid_on_data_with_a_true_tree_reports_it(tmp_path):
    (tmp_path / "g.yaml").write_text(GRID)
    result = run_cli("experiment", "--config", str(tmp_path / "g.yaml"), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    for name in ("flat", "oracle-norm", "oracle-random-norm"):
        runs = [json.loads((out / "runs" / f"{name}-s{s}" / "results.json").read_text()) for s in (0, 1)]
        v = summary["variants"][name]
        assert v["coarse_top1"] == [r["truth"]["coarse_top1"] for r in runs]
        assert all(r["truth"]["coarse_top1"] >= r["top1"] for r in runs)  # a right class is in its right group
    groups = summary["groups"]
    assert groups["oracle-norm"]["coarse_ari"] == [1.0, 1.0]
    assert np.mean(groups["oracle-random-norm"]["coarse_ari"]) < 1.0
    assert "coarse_random_nmi" in groups["oracle-norm"]
    assert set(summary["truth"]) == {"oracle-norm", "oracle-random-norm"}
    assert "oracle-norm_vs_oracle-random-norm" in summary["controls"]
    report = (out / "report.md").read_text()
    assert "## Against the true hierarchy" in report and "| oracle-random-norm |" in report
    assert "NMI, random same sizes" in report
