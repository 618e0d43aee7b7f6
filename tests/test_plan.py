"""The run plan (ccn.plan): one step resolves every default against the data set and checks the rules
that need the data; what follows reads the plan. A run folder records it as plan.json beside config.yaml."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ccn import config as cfgmod
from ccn.data import load_dataset
from ccn.data.base import ImageDataset, split_per_class
from ccn.data.prepare import PROBE_HOLDOUT_SEED, VALIDATION_SEED, prepare_data
from ccn.errors import ConfigError, DataError
from ccn.plan import DataFacts, resolve
from ccn.records import KINDS
from conftest import run_cli

DIGITS = ["data.train_per_class=40", "data.test_per_class=10"]


def _plan(overrides, ds=None):
    config = cfgmod.load(None, [*DIGITS, *overrides])
    ds = ds if ds is not None else load_dataset(config.data)
    return resolve(config, DataFacts.of(ds)), ds


def test_the_plan_fixes_the_defaults_of_a_ccn_run_on_digits():
    plan, _ = _plan(["train.batch_size=32"])
    assert (plan.data, plan.num_classes, plan.crop, plan.crop_padding) == ("digits", 10, "pad", 1)  # 8 px // 8
    assert plan.flips is False and plan.store == "memory"  # digits: a mirrored glyph is another glyph
    assert plan.num_groups == 3 and plan.clustering_epoch == 1 and plan.recursion_epoch is None  # round(sqrt(10))
    assert (plan.train_images, plan.batch_size, plan.steps_per_epoch) == (400, 32, 12)
    assert plan.planned_steps == 20 * 12 and (plan.tta, plan.inference) == ("none", "soft")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.num_groups = 4


def test_a_flat_plan_has_no_groups_and_scores_with_the_flat_rule():
    plan, _ = _plan(["method.name=flat", "data.flip=true", "train.tta=mirror"])
    assert (plan.num_groups, plan.clustering_epoch, plan.recursion_epoch) == (None, None, None)
    assert (plan.inference, plan.tta, plan.flips) == ("flat", "mirror", True)


def test_the_plan_resolves_the_recursion_and_a_threshold():
    plan, _ = _plan(["method.depth=2", "method.probe_epochs=2"])
    assert (plan.clustering_epoch, plan.recursion_epoch) == (2, 3)
    assert _plan(["method.threshold=0.5"])[0].num_groups is None  # the cut's distance decides


@pytest.mark.parametrize("overrides", [
    ["data.val_fraction=0.2"], ["method.probe_set=holdout", "method.holdout_fraction=0.3"],
    ["data.val_fraction=0.15", "method.probe_set=holdout", "method.holdout_fraction=0.25"]])
def test_the_training_images_counted_before_any_draw_are_the_ones_prepared(overrides):
    """The plan counts the hold-outs per class (ccn.data.base.held_out_count); prepare_data draws
    them: the count and the steps per epoch must be what the batches hold."""
    ds = load_dataset(cfgmod.load(None, DIGITS).data)
    keep = torch.arange(len(ds.train_labels))[torch.arange(len(ds.train_labels)) % 7 != 0]  # uneven classes
    uneven = ImageDataset("digits", ds.classes, ds.train_images[keep], ds.train_labels[keep], ds.test_images,
                          ds.test_labels, flip=False)
    plan, _ = _plan(overrides, uneven)
    data = prepare_data(plan, torch.device("cpu"), ds=uneven)
    assert plan.train_images == len(data.train.labels) < len(keep)
    assert plan.steps_per_epoch == len(data.train)
    y = uneven.train_labels
    if plan.config.data.val_fraction > 0:
        y = y[split_per_class(y, plan.config.data.val_fraction, VALIDATION_SEED)[0]]
    if plan.config.method.probe_set == "holdout":
        y = y[split_per_class(y, plan.config.method.holdout_fraction, PROBE_HOLDOUT_SEED)[0]]
    assert len(y) == plan.train_images


def test_rules_that_need_the_data_are_refused_by_the_plan():
    with pytest.raises(ConfigError, match="method.groups=11 is impossible with 10 classes in data digits"):
        _plan(["method.groups=11"])
    with pytest.raises(ConfigError, match="train.tta=mirror scores mirror images, but data digits is not flipped"):
        _plan(["train.tta=mirror"])
    with pytest.raises(ConfigError, match="method.partition=oracle needs coarse labels, which data set 'digits'"):
        _plan(["method.partition=oracle"])  # was said at step 2, after the probe epochs
    with pytest.raises(ConfigError, match="method.random_sizes=oracle needs coarse labels.*random_sizes=learned"):
        _plan(["method.partition=random", "method.random_sizes=oracle"])
    assert _plan(["data.name=synthetic", "method.partition=oracle"])[0].num_groups == 4  # planted coarse labels
    images = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    single = ImageDataset("tiny", ["a", "b"], images, torch.tensor([0, 1, 1]), images[:2], torch.tensor([0, 1]))
    with pytest.raises(DataError, match=r"holds out no image of 1 class\(es\) \(a\)"):
        _plan(["method.probe_set=holdout", "train.batch_size=2"], single)



def test_the_plan_refuses_images_smaller_than_the_model_takes():
    """airbench pools 9 px down to 1: the plan refuses smaller images with the data's side in hand,
    before the network is built; the backbone itself keeps a plain guard for a library caller."""
    from ccn.models.airbench import AirbenchNet

    facts = DataFacts("digits", tuple(map(str, range(10))), (20,) * 10, image_size=8, flips=False, store="memory")
    airbench = cfgmod.load(None, ["model.name=airbench"])
    with pytest.raises(ConfigError, match=r"model.name=airbench needs images of at least 9px \(a 2x2 whitening conv, "
                                          r"then three 2x2 poolings\), got 8px: set data.image_size=9 or more"):
        resolve(airbench, facts)
    assert resolve(airbench, dataclasses.replace(facts, image_size=9)).input_side == 9
    assert resolve(cfgmod.load(None, []), facts).input_side == 8  # resnet9 takes any side
    with pytest.raises(ValueError, match=r"airbench needs images of at least 9px .*got \(8, 8\)"):
        AirbenchNet(width=4).forward_features(torch.zeros(1, 3, 8, 8))


RUN = ["--set", "data.train_per_class=40", "--set", "data.test_per_class=10", "--set", "model.width=8",
       "--set", "train.epochs=3", "--set", "train.deterministic=true", "--set", "train.progress=false"]


def test_a_run_writes_its_plan_and_a_run_started_without_one_resumes(tmp_path):
    """plan.json (format 1) beside config.yaml; a run interrupted before plan.json existed (here:
    removed) resumes to the weights of an uninterrupted run and gets its plan.json."""
    reference = tmp_path / "ref"
    assert run_cli("train", *RUN, "--out", str(reference)).returncode == 0
    recorded = json.loads((reference / "plan.json").read_text())
    assert recorded["format"] == KINDS["plan"].current == 1 and recorded["num_groups"] == 3 and recorded["steps_per_epoch"] == 12
    assert "config" not in recorded  # config.yaml holds what was asked
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-m", "ccn", "train", *RUN, "--out", str(out)], capture_output=True,
                            text=True, env={**os.environ, "CCN_FAULT": "after-clustering"})
    assert killed.returncode == -9, killed.stderr
    (out / "plan.json").unlink()  # as a run started by a ccn without plan.json
    resumed = run_cli("train", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    ours, theirs = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert json.loads((out / "plan.json").read_text()) == recorded
    (reference / "plan.json").unlink()  # a finished run without plan.json is still scored
    assert run_cli("evaluate", str(reference)).returncode == 0
