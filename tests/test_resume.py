"""A run killed with SIGKILL at any point and resumed ends bit-identical to an uninterrupted run."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli

# digits, 40 images per class: 12 steps per epoch; groups after epoch 1; deterministic on CPU
RUN = ["--set", "data.train_per_class=40", "--set", "data.test_per_class=10", "--set", "model.width=8",
       "--set", "train.epochs=4", "--set", "train.deterministic=true", "--set", "train.progress=false",
       "--set", "model.dropout=0.2"]


def _train_killed_at(point: str, out) -> subprocess.CompletedProcess:
    env = {**os.environ, "CCN_FAULT": point}
    return subprocess.run([sys.executable, "-m", "ccn", "train", *RUN, "--out", str(out)],
                          capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    result = run_cli("train", *RUN, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("point", ["step-18", "during-save", "after-probe", "after-clustering", "step-30",
                                   "mid-metrics-line-3", "after-epoch-row-2", "before-results"])
def test_killed_and_resumed_run_is_bit_identical(point, reference, tmp_path):
    out = tmp_path / "run"
    killed = _train_killed_at(point, out)
    assert killed.returncode == -9, killed.stderr  # SIGKILL
    assert not (out / "results.json").exists()
    resumed = run_cli("train", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    ours, theirs = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    rows = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4]
    assert json.loads((out / "results.json").read_text())["top1"] == json.loads(
        (reference / "results.json").read_text())["top1"]
    assert not list(out.glob(".*.tmp"))


def test_resume_of_a_finished_run_changes_nothing(reference):
    before = (reference / "model.safetensors").read_bytes()
    result = run_cli("train", "--resume", str(reference))
    assert result.returncode == 0 and "already finished" in result.stdout
    assert (reference / "model.safetensors").read_bytes() == before


def test_resume_refuses_other_flags_and_non_runs(tmp_path):
    result = run_cli("train", "--resume", str(tmp_path), "--set", "train.epochs=2")
    assert result.returncode == 2 and "drop --config" in result.stderr
    result = run_cli("train", "--resume", str(tmp_path))
    assert result.returncode == 2 and "not a ccn run folder" in result.stderr
