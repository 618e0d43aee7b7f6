"""Grids compare only what is comparable: a built-in variant name keeps its meaning, variants train and
score the same images, and a run folder is never written into an experiment folder."""

import dataclasses
import json
import shutil

import pytest
import yaml

from ccn import config as cfgmod
from ccn.errors import ConfigError
from ccn.experiment import run_grid
from ccn.grid import IMAGE_SET_KEYS, load_grid
from ccn.recipes import PACKAGED
from conftest import REPO, TINY_RUN, run_cli

BASE = {"data": {"name": "synthetic", "num_classes": 6, "num_groups": 2, "train_per_class": 6, "test_per_class": 2},
        "model": {"width": 4}, "train": {"epochs": 2, "progress": False}}


def _grid(tmp_path, variants, seeds=(0,)):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"base": BASE, "variants": variants, "seeds": list(seeds)}, sort_keys=False))
    return path


def test_a_builtin_name_with_overrides_is_the_builtin_variant_with_them(tmp_path):
    """`flat: {train: {lr: 0.1}}` trained ccn and `random: {...}` the learned partition, so the
    report compared ccn with ccn as "random vs flat"; `flat: {}` trained ccn too."""
    grid = load_grid(_grid(tmp_path, {"flat": {"train": {"lr": 0.1}}, "random": {"train": {"lr": 0.1}},
                                      "k-3-norm": {"method": {"metric": "l2"}}, "ccn": {}}))
    flat, random, k3, ccn = (grid.config_for(name, 0) for name in ("flat", "random", "k-3-norm", "ccn"))
    assert flat.method.name == "flat" and flat.train.lr == 0.1
    assert (random.method.name, random.method.partition, random.train.lr) == ("ccn", "random", 0.1)
    assert (k3.method.groups, k3.method.normalize_loss, k3.method.metric) == (3, True, "l2")
    assert ccn.method.name == "ccn"
    # grid.yaml records the whole variant, so the folder's grid never depends on the built-in table
    assert grid.raw["variants"]["flat"] == {"method": {"name": "flat"}, "train": {"lr": 0.1}}
    assert load_grid(_grid(tmp_path, {"flat": {}, "ccn": None})).config_for("flat", 0).method.name == "flat"


@pytest.mark.parametrize("variants, key", [
    ({"flat": {"method": {"name": "ccn"}}, "ccn": {"method": {"name": "flat"}}}, "method.name"),
    ({"flat": None, "random": {"method": {"partition": "learned"}}}, "method.partition"),
    ({"flat": None, "k-5": {"method": {"groups": 4}}}, "method.groups"),
    ({"flat": None, "ccn-norm": {"method": {"normalize_loss": False}}}, "method.normalize_loss"),
    ({"flat": {"method": None}}, "method"),
])
def test_an_override_that_changes_what_a_builtin_name_sets_is_refused(tmp_path, variants, key):
    name = next(n for n, o in variants.items() if o)
    with pytest.raises(ConfigError, match=f"variant '{name}' is built in .*its overrides set {key} to .*rename the "
                                          f"variant \\(such as my-{name}\\)"):
        load_grid(_grid(tmp_path, variants))


@pytest.mark.parametrize("where", ["override", "base", "set"])
def test_what_a_builtin_name_implies_cannot_be_changed_from_anywhere(tmp_path, where):
    """Built-in `ccn` sets only method.name; its learned partition and plain loss are implied. Random groups
    (or a normalised loss) given in its overrides, the base or --set made "ccn vs random" compare random
    with random under the names of the method and its control."""
    variants = {"flat": None, "ccn": {"method": {"partition": "random"}} if where == "override" else None}
    path = _grid(tmp_path, variants)
    if where == "base":
        raw = yaml.safe_load(path.read_text())
        raw["base"]["method"] = {"partition": "random"}
        path.write_text(yaml.safe_dump(raw))
    overrides = ["method.partition=random"] if where == "set" else []
    with pytest.raises(ConfigError, match="variant 'ccn' is built in with method.partition=learned, but the base "
                                          "config, --set or its overrides make it random"):
        load_grid(path, overrides)
    with pytest.raises(ConfigError, match="variant 'ccn' is built in with method.normalize_loss=False"):
        load_grid(_grid(tmp_path, {"flat": None, "ccn": None}), ["method.normalize_loss=true"])
    grid = load_grid(_grid(tmp_path, {"flat": None, "ccn-norm": None, "k-2-random": None}))
    assert grid.config_for("ccn-norm", 0).method.normalize_loss and grid.config_for("k-2-random", 0).method.partition == "random"


def test_overrides_that_repeat_a_builtin_are_what_recorded_studies_hold(tmp_path):
    """Every grid.yaml of docs/results (the built-ins written out) and the packaged grids (src/ccn/configs/
    experiments) load to the variants they record, so no recorded study changes meaning and each folder can still be continued."""
    files = sorted((REPO / "docs" / "results").glob("*/grid.yaml"))
    assert files
    for path in files:
        recorded = cfgmod.read_yaml(path)["variants"]
        assert load_grid(path).raw["variants"] == recorded, path
    fast = load_grid(PACKAGED / "experiments" / "cifar10_fast_ablation.yaml")  # data keys of augmentation only
    assert fast.config_for("random-flip", 0).data.flip_mode == "random"


@pytest.mark.parametrize("overrides", [
    {"data": {"val_fraction": 0.5}}, {"data": {"test_per_class": 1}}, {"data": {"skip_bad_images": True}},
    {"data": {"name": "digits"}}, {"method": {"probe_set": "holdout"}},
], ids=["val_fraction", "test_per_class", "skip_bad_images", "name", "probe_set"])
def test_a_variant_that_changes_the_images_is_refused(tmp_path, overrides):
    """ccnval (val_fraction 0.5: 18 validation images) was reported "+0.00 [+0.00, +0.00]" against flat
    (12 test images) as if paired."""
    section, values = next(iter(overrides.items()))
    key = f"{section}.{next(iter(values))}"
    with pytest.raises(ConfigError, match=f"variant 'mine' sets {key}, which gives its runs .*set {key} in base:"):
        load_grid(_grid(tmp_path, {"flat": None, "mine": {"method": {"name": "ccn"}, **overrides}}))
    assert load_grid(_grid(tmp_path, {"flat": None, "mine": {"data": {"flip_mode": "alternate", "cutout": 2}}}))
    assert load_grid(_grid(tmp_path, {"flat": None, "px24": {"data": {"image_size": 24}}}))  # the same images, resized


# Data keys a variant may set: they change how the same images are shown (size, crops, augmentation), or where
# images live.
TRAINING_ONLY_DATA_KEYS = {"download", "flip", "crop_padding", "crop_scale", "crop_ratio", "cutout", "flip_mode",
                           "pad_mode", "augment", "randaugment_n", "randaugment_m", "cache", "store", "workers", "worker_timeout",
                           "image_size", "crop", "eval_crop"}


def test_every_data_key_is_either_refused_in_a_variant_or_training_only():
    """A new data key must choose: allowed in a variant, or in grid.IMAGE_SET_KEYS."""
    keys = {f.name for f in dataclasses.fields(cfgmod.DataConfig)}
    assert keys == set(IMAGE_SET_KEYS["data"]) | TRAINING_ONLY_DATA_KEYS
    assert not set(IMAGE_SET_KEYS["data"]) & TRAINING_ONLY_DATA_KEYS


@pytest.fixture(scope="module")
def two_seed_grid(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    run_grid(load_grid(_grid(folder, ["flat", "ccn", "random"], seeds=(0, 1))), folder / "out", log=lambda line: None)
    return folder


@pytest.mark.parametrize("edit, why", [
    ({"eval_set": "validation", "test_images": 18}, "seed 1: eval_set 'validation' (ccn), 'test' (flat); test_images 18"),
    ({"train_images": 30}, "seed 1: train_images 30 (ccn), 36 (flat)"),
], ids=["validation-set", "fewer-training-images"])
def test_runs_that_scored_other_images_are_named_not_compared(two_seed_grid, tmp_path, edit, why):
    """The report's own check, for what the grid file cannot show (the data folder changed between two
    runs, a results.json from elsewhere): no difference is computed, summary.json and the report say why."""
    out = tmp_path / "out"
    shutil.copytree(two_seed_grid / "out", out)
    results = out / "runs" / "ccn-s1" / "results.json"
    results.write_text(json.dumps({**json.loads(results.read_text()), **edit}))
    result = run_cli("experiment", "--config", str(two_seed_grid / "g.yaml"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert "ccn" not in summary["paired"] and "random" in summary["paired"] and summary["controls"] == {}
    assert [(s["compare"], s["family"]) for s in summary["not_comparable"]] == [
        (["ccn", "flat"], "paired"), (["ccn", "random"], "controls")]
    assert summary["not_comparable"][0]["why"].startswith(why)
    report = (out / "report.md").read_text()
    assert "| ccn |" in report and "| not comparable |" in report and f"- **ccn** vs flat (against the reference): {why}" in report
    assert "**ccn** is" not in report and "other runs had other images" in report
    assert f"ccn vs flat: not comparable ({why}" in result.stdout


def test_ccn_train_into_an_experiment_folder_is_refused(two_seed_grid, tmp_path):
    """`ccn train --out F` with F an experiment folder wrote a run beside grid.yaml and report.md."""
    out = tmp_path / "out"
    shutil.copytree(two_seed_grid / "out", out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    for extra in ([], ["--force"]):
        result = run_cli("train", *[a for s in TINY_RUN for a in ("--set", s)], "--out", str(out), *extra)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert f"--out {out} is an experiment folder (it holds grid.yaml)" in result.stderr
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
