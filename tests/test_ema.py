"""train.ema: a weight average trained alongside, scored and saved, the same for every head."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ccn import config as cfgmod
from ccn.ema import WeightAverage
from conftest import run_cli


def test_the_average_moves_by_one_minus_decay_and_copies_counters():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = WeightAverage(model, decay=0.9)
    before = ema.shadow["0.weight"].clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 3
    ema.update(model)
    assert torch.allclose(ema.shadow["0.weight"], before + 0.1)
    assert int(ema.shadow["1.num_batches_tracked"]) == 3


def _method_run(name: str):
    from ccn.pipeline import MethodRun
    from ccn.tracking import RunLog
    config = cfgmod.load(None, ["data.train_per_class=10", "data.test_per_class=5", "model.width=8",
                                "train.epochs=3", "train.ema=0.9", "train.progress=false", f"method.name={name}"])
    return MethodRun(config, None, RunLog(None, enabled=False), __import__("ccn.dist").dist.World(), None)


def test_flat_and_ccn_average_the_same_way_and_the_average_follows_head_swaps():
    """The probe epoch of ccn is the flat run's first epoch: the two averages must agree exactly.
    After the head swap the average keeps the backbone's entries and starts the new heads from live."""
    from ccn.dist import seed_stream
    runs = {name: _method_run(name) for name in ("flat", "ccn")}
    for run in runs.values():
        seed_stream(run.config.seed, 0, 1)
        run.trainer.train_epoch(run.data.train, 1)
    flat, ccn = runs["flat"].trainer.ema.shadow, runs["ccn"].trainer.ema.shadow
    assert flat.keys() == ccn.keys() and all(torch.equal(flat[k], ccn[k]) for k in flat)
    backbone = {k: v.clone() for k, v in ccn.items() if k.startswith("backbone.")}
    runs["ccn"].cluster_classes(1)
    model, shadow = runs["ccn"].model.state_dict(), runs["ccn"].trainer.ema.shadow
    assert shadow.keys() == model.keys()
    assert all(torch.equal(shadow[k], v) for k, v in backbone.items())
    new = [k for k in model if k.startswith("head.") and k not in flat]
    assert new and all(torch.equal(shadow[k], model[k]) for k in new)


RUN = ["--set", "data.train_per_class=40", "--set", "data.test_per_class=10", "--set", "model.width=8",
       "--set", "train.epochs=4", "--set", "train.progress=false", "--set", "model.dropout=0.2",
       "--set", "train.ema=0.95"]


@pytest.mark.slow
def test_ema_run_reports_both_scores_saves_the_average_and_resumes_bit_identically(tmp_path):
    reference = tmp_path / "ref"
    result = run_cli("train", *RUN, "--out", str(reference))
    assert result.returncode == 0, result.stderr
    results = json.loads((reference / "results.json").read_text())
    assert results["model_weights"] == "ema" and results["ema_decay"] == 0.95
    assert set(results["scores_by_weights"]) == {"ema", "live"}
    assert results["top1"] == results["scores_by_weights"]["ema"]["top1"]
    killed = tmp_path / "killed"
    env = {**os.environ, "CCN_FAULT": "step-30"}  # in epoch 3, after the head swap
    run = subprocess.run([sys.executable, "-m", "ccn", "train", *RUN, "--out", str(killed)], capture_output=True,
                         text=True, env=env)
    assert run.returncode == -9, run.stderr
    assert run_cli("train", "--resume", str(killed)).returncode == 0
    ours, theirs = load_file(str(killed / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert json.loads((killed / "results.json").read_text())["scores_by_weights"] == results["scores_by_weights"]
