import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from ccn.errors import ConfigError
from ccn.grid import load_grid
from ccn.grid_statistics import paired_difference
from conftest import run_cli

GRID = """
base:
  data: {name: synthetic, num_classes: 8, num_groups: 2, train_per_class: 30, test_per_class: 10}
  model: {name: fastnet, width: 8}
  train: {epochs: 3, batch_size: 32, lr: 0.05, progress: false, deterministic: true}
  method: {groups: 2}
variants: [flat, ccn, random, oracle, late-2]
seeds: [0, 1]
"""


def test_paired_difference_is_a_t_interval():
    a, b = [0.80, 0.82, 0.85], [0.78, 0.81, 0.80]
    p = paired_difference(a, b)
    d = np.array(a) - np.array(b)
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert p["diff_mean"] == pytest.approx(d.mean())
    assert p["ci95"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert p["verdict"] == ("better" if d.mean() - half > 0 else "indistinguishable")
    assert paired_difference([0.9, 0.91, 0.92], [0.5, 0.52, 0.49])["verdict"] == "better"
    assert paired_difference([0.5, 0.52, 0.49], [0.9, 0.91, 0.92])["verdict"] == "worse"
    assert paired_difference([0.5], [0.4])["ci95"] is None
    assert p["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)


def test_holm_adjustment_matches_the_step_down_rule():
    from ccn.grid_statistics import add_holm_verdicts, holm_adjust
    raw = [0.01, 0.04, 0.03, 0.20]
    # sorted 0.01, 0.03, 0.04, 0.20 -> x4, x3, x2, x1, then running maximum
    assert holm_adjust(raw) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    paired = {"a": {"p": 0.01, "diff_mean": 0.02}, "b": {"p": 0.04, "diff_mean": -0.01},
              "c": {"p": 0.03, "diff_mean": 0.01}, "d": {"p": 0.20, "diff_mean": 0.0}, "e": {"p": None, "diff_mean": 0}}
    add_holm_verdicts(paired)
    assert paired["a"]["verdict_holm"] == "better" and paired["b"]["verdict_holm"] == "indistinguishable"
    assert "p_holm" not in paired["e"]


def test_builtin_partition_variants():
    from ccn.grid import builtin_variant
    assert builtin_variant("k-7") == {"method": {"name": "ccn", "groups": 7}}
    assert builtin_variant("balanced-random")["method"] == {"name": "ccn", "clustering": "balanced",
                                                             "partition": "random"}
    assert builtin_variant("prior")["method"]["profile"] == "prior"
    assert builtin_variant("k-x") is None


def test_partition_twins_are_the_variants_with_one_probe(tmp_path):
    """Twins differ only after the probe (random groups of the learned sizes, the normalised loss)."""
    from ccn.report import partition_twins
    (tmp_path / "g.yaml").write_text(GRID.replace("[flat, ccn, random, oracle, late-2]",
                                                  "[flat, ccn, ccn-norm, random, k-1, k-5, k-5-random, oracle]"))
    assert partition_twins(load_grid(tmp_path / "g.yaml")) == [
        ("ccn", "ccn-norm"), ("ccn", "random"), ("ccn-norm", "random"), ("k-5", "k-5-random")]
    (tmp_path / "g.yaml").write_text(GRID.replace("[flat, ccn, random, oracle, late-2]",
                                                  "{flat: null, ccn: null, depth2: null, hard: {method: {inference: hard}}, "
                                                  "light: {method: {flat_weight: 0.5}}}"))
    assert partition_twins(load_grid(tmp_path / "g.yaml")) == [("ccn", "hard"), ("ccn", "light"), ("hard", "light")]


def test_grid_errors(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("variants: [flat, wobble]\n")
    with pytest.raises(ConfigError, match="'wobble' is not built in"):
        load_grid(path)
    path.write_text("variants: [flat, ccn]\nseeds: [0, 0]\n")
    with pytest.raises(ConfigError, match="distinct"):
        load_grid(path)
    path.write_text("variants: {flat: null, odd: {method: {metric: l7}}}\n")
    with pytest.raises(ConfigError, match="variant 'odd'.*l7"):
        load_grid(path)
    path.write_text("variants: [ccn]\n")
    with pytest.raises(ConfigError, match="reference variant 'flat'"):
        load_grid(path)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grid")
    (folder / "g.yaml").write_text(GRID)
    result = run_cli("experiment", "--config", str(folder / "g.yaml"), "--out", str(folder / "out"))
    assert result.returncode == 0, result.stderr
    return folder, result.stdout


def test_summary_and_report(grid_run):
    folder, stdout = grid_run
    out = folder / "out"
    summary = json.loads((out / "summary.json").read_text())
    for name in ("flat", "ccn", "random", "oracle", "late-2"):
        v = summary["variants"][name]
        assert len(v["top1"]) == 2 and v["top1_mean"] == pytest.approx(np.mean(v["top1"]))
        assert v["top1_std"] == pytest.approx(np.std(v["top1"], ddof=1))
        per_seed = [json.loads((out / "runs" / f"{name}-s{s}" / "results.json").read_text())["top1"] for s in (0, 1)]
        assert v["top1"] == per_seed
    ccn, flat = summary["variants"]["ccn"]["top1"], summary["variants"]["flat"]["top1"]
    assert summary["paired"]["ccn"]["diff_mean"] == pytest.approx(np.mean(np.array(ccn) - np.array(flat)))
    assert len(summary["paired"]["ccn"]["ci95"]) == 2 and "flat" not in summary["paired"]
    random = summary["variants"]["random"]["top1"]
    assert summary["controls"]["ccn_vs_random"]["diff_mean"] == pytest.approx(np.mean(np.array(ccn) - np.array(random)))
    assert summary["groups"]["oracle"]["coarse_ari"] == [1.0, 1.0]
    assert len(summary["groups"]["ccn"]["seed_ari"]) == 1
    report = (out / "report.md").read_text()
    assert "| ccn |" in report and "95 % interval" in report and "Learned groups of `ccn`" in report
    for figure in ("differences.png", "dendrogram.png", "distances.png", "per_group.png"):
        assert (out / figure).stat().st_size > 1000 and f"({figure})" in report
    assert report.index("(differences.png)") < report.index("(dendrogram.png)")  # the first figure
    assert "after Holm's adjustment over the 4 comparisons with flat" in report
    assert "No comparison was declared before the runs" in report
    # every run names its code (one version, unless the checkout changed while the grid ran)
    named = sorted(run for version in summary["code"] for run in version["runs"])
    assert named == sorted(f"{v}-s{s}" for v in summary["variants"] for s in (0, 1))
    assert all(version["code"]["torch"] for version in summary["code"])
    assert ("Code: every run was produced by" in report) == (len(summary["code"]) == 1)
    assert "ccn vs flat" in stdout


def test_a_finished_grid_is_reported_again_without_torch(grid_run, tmp_path):
    """Reading a finished grid (its grid.yaml, the runs' results.json and hierarchy.json) and writing
    its summary, report and figures imports no torch, and gives the summary the grid wrote."""
    folder, _ = grid_run
    out = tmp_path / "out"
    shutil.copytree(folder / "out", out)
    (out / "summary.json").unlink()
    code = ("import sys; from pathlib import Path; from ccn.grid import load_grid; from ccn.report import write_report; "
            f"out = Path({str(out)!r}); write_report(load_grid(out / 'grid.yaml'), out, 0.0); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "summary.json").read_text()) == json.loads((folder / "out" / "summary.json").read_text())
    assert (out / "report.md").read_text().count("(per_group.png)") == 1


def test_report_of_a_flat_one_seed_grid_claims_no_test_and_shows_no_group_tables(tmp_path):
    """A budget grid (flat variants, one seed) compares nothing: its report says so instead of 'Holm
    over the 0 variants', and has neither the inference-rule table nor the groups section."""
    grid = GRID.replace("variants: [flat, ccn, random, oracle, late-2]", "variants:\n  e1: {train: {epochs: 1}}\n"
                        "  e2: {train: {epochs: 2}}").replace("seeds: [0, 1]", "seeds: [0]\nreference: e1")
    grid = grid.replace("method: {groups: 2}", "method: {name: flat}")
    (tmp_path / "g.yaml").write_text(grid)
    result = run_cli("experiment", "--config", str(tmp_path / "g.yaml"), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Against e1 (one seed per variant: no interval and no test" in report
    assert "Holm over the 0" not in report and "**e2** vs e1" in report and "no claim" in report
    assert "inference rule" not in report and "## Groups" not in report
    assert "1-2 (by variant) epochs" in report and "no verdict is drawn" in report
    assert "Student-t" not in report and "95 % interval" not in report.replace("95 % interval |", "")


def test_late_variant_clusters_later(grid_run):
    folder, _ = grid_run
    rows = [json.loads(line) for line in (folder / "out" / "runs" / "late-2-s0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["probe", "probe", "ccn"]


@pytest.mark.slow  # a whole grid run again after a kill: the longest unmarked test (210 s at load 25, beside 273 s for the slow EMA run)
def test_rerun_reuses_and_interrupted_grid_continues(grid_run, tmp_path):
    folder, _ = grid_run
    again = run_cli("experiment", "--config", str(folder / "g.yaml"), "--out", str(folder / "out"))
    assert again.returncode == 0 and again.stdout.count("reused") == 10
    out = tmp_path / "out"
    env = {**os.environ, "CCN_FAULT": "after-clustering"}  # dies inside the ccn run of seed 0
    killed = subprocess.run([sys.executable, "-m", "ccn", "experiment", "--config", str(folder / "g.yaml"),
                             "--out", str(out)], capture_output=True, text=True, env=env)
    assert killed.returncode == -9
    resumed = run_cli("experiment", "--config", str(folder / "g.yaml"), "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "[flat seed 0] finished earlier: reused" in resumed.stdout and "[ccn seed 0] resuming" in resumed.stdout
    ours = json.loads((out / "summary.json").read_text())["variants"]
    theirs = json.loads((folder / "out" / "summary.json").read_text())["variants"]
    assert {k: v["top1"] for k, v in ours.items()} == {k: v["top1"] for k, v in theirs.items()}


def test_other_grid_in_the_same_folder_is_refused(grid_run, tmp_path):
    folder, _ = grid_run
    other = tmp_path / "other.yaml"
    other.write_text(GRID.replace("seeds: [0, 1]", "seeds: [5, 6]"))
    result = run_cli("experiment", "--config", str(other), "--out", str(folder / "out"))
    assert result.returncode == 2 and "holds another grid" in result.stderr


def test_a_grid_that_adds_seeds_and_variants_widens_the_folder(grid_run, tmp_path):
    folder, _ = grid_run
    out = tmp_path / "out"
    shutil.copytree(folder / "out", out)
    wider = tmp_path / "wider.yaml"
    wider.write_text(GRID.replace("late-2]", "late-2, k-3]"))
    result = run_cli("experiment", "--config", str(wider), "--out", str(out), "--set", "seeds=[0, 1, 2]")
    assert result.returncode == 0, result.stderr
    assert "grows by seeds 2 and variants k-3" in result.stdout
    assert result.stdout.count("finished earlier: reused") == 10 and result.stdout.count("training in") == 8
    ours = json.loads((out / "summary.json").read_text())["variants"]
    theirs = json.loads((folder / "out" / "summary.json").read_text())["variants"]
    assert set(ours) == set(theirs) | {"k-3"}
    for name, old in theirs.items():  # the first two seeds are the finished runs, untouched
        assert ours[name]["top1"][:2] == old["top1"] and len(ours[name]["top1"]) == 3
    assert load_grid(out / "grid.yaml").seeds == [0, 1, 2]
    narrower = run_cli("experiment", "--config", str(folder / "g.yaml"), "--out", str(out))
    assert narrower.returncode == 2 and "may only add seeds or variants" in narrower.stderr


def _move_one_class(hierarchy_json):
    """Move a class from the largest group to the smallest: a partition of other sizes."""
    data = json.loads(hierarchy_json.read_text())
    for key in ("groups", "tree"):
        groups = sorted(data[key], key=len)
        groups[0].append(groups[-1].pop())
        data[key] = [g for g in groups if g]
    hierarchy_json.write_text(json.dumps(data))


def test_partition_twins_that_learned_other_sizes_are_named(grid_run, tmp_path):
    """ccn and random run the same probe epoch for a seed, so their groups have the same sizes; when
    they do not (the probe's floating point depends on the thread count), summary.json and the
    report name the seed instead of passing its difference off as one partition's."""
    from ccn.report import partition_twins, summarise
    folder, _ = grid_run
    out = tmp_path / "out"
    shutil.copytree(folder / "out", out)
    grid = load_grid(out / "grid.yaml")
    assert partition_twins(grid) == [("ccn", "random")]  # late-2 probes longer, oracle has no probe
    assert summarise(grid, out)["partition_mismatches"] == []
    assert "should agree" not in (out / "report.md").read_text()
    _move_one_class(out / "runs" / "random-s1" / "hierarchy.json")
    result = run_cli("experiment", "--config", str(folder / "g.yaml"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    mismatches = json.loads((out / "summary.json").read_text())["partition_mismatches"]
    assert [(m["variants"], m["seed"]) for m in mismatches] == [(["ccn", "random"], 1)]
    assert mismatches[0]["sizes"][0] != mismatches[0]["sizes"][1] and "threads" in mismatches[0]["machines"][0]
    threads = json.loads((out / "runs" / "ccn-s1" / "hierarchy.json").read_text())["how"]["probe_cpu_threads"]
    assert mismatches[0]["probe_threads"] == [threads, threads] and threads >= 1
    report = (out / "report.md").read_text()
    assert "## Partitions that should agree and do not" in report and "- seed 1: ccn [" in report
    assert f"(probe on {threads} thread" in report


@pytest.mark.parametrize("where", ["base", "variant", "set"])
def test_a_seed_outside_seeds_is_refused(tmp_path, where):
    """Every run's seed is the grid's: a seed: elsewhere would be overwritten without a word."""
    grid, overrides = GRID, []
    if where == "base":
        grid = grid.replace("base:\n", "base:\n  seed: 7\n")
    elif where == "variant":
        grid = grid.replace("variants: [flat, ccn, random, oracle, late-2]", "variants: {flat: null, mine: {seed: 5}}")
    else:
        overrides = ["seed=3"]
    (tmp_path / "g.yaml").write_text(grid)
    with pytest.raises(ConfigError, match="sets seed, but every run's seed comes from the grid's seeds: list"):
        load_grid(tmp_path / "g.yaml", overrides)


@pytest.mark.parametrize("held", ["report.md", "summary.json", "differences.png", "config.yaml"])
def test_an_out_folder_holding_what_a_grid_writes_is_refused_and_left_alone(tmp_path, held):
    """Without grid.yaml, OUT is not a grid's folder: a report, summary or figure there is someone's
    (a `ccn train` run folder holds config.yaml), and the grid would overwrite it."""
    from ccn.errors import CCNError
    from ccn.experiment import run_grid
    (tmp_path / "g.yaml").write_text(GRID)
    out = tmp_path / "out"
    out.mkdir()
    (out / held).write_text("mine")
    (out / "notes.txt").write_text("mine too")
    with pytest.raises(CCNError, match=f"has no grid.yaml but holds {held}, which ccn experiment would overwrite"):
        run_grid(load_grid(tmp_path / "g.yaml"), out, log=lambda line: None)
    assert sorted(p.name for p in out.iterdir() if p.name != ".ccn-lock") == sorted([held, "notes.txt"])
    assert (out / held).read_text() == "mine"
