"""Distributed data parallel on CPU (gloo): helpers in-process, and the real command under torchrun."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli


def _helpers_worker(rank: int, world: int, init_file: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from ccn.dist import all_reduce_sum, broadcast_buffers
        from ccn.hierarchy.profiles import ProfileSums

        total = all_reduce_sum(torch.tensor([float(rank + 1)]))
        assert total.item() == 3.0
        bn = torch.nn.BatchNorm1d(3)
        bn.running_mean.fill_(float(rank))  # ranks disagree ...
        broadcast_buffers(bn)
        assert torch.all(bn.running_mean == 0)  # ... until rank 0's statistics are shared
        g = torch.Generator().manual_seed(0)
        probs = torch.softmax(torch.randn(12, 4, generator=g), 1)
        labels = torch.arange(12) % 4
        mine = slice(rank, None, world)  # each rank holds half of the probe set
        tally = ProfileSums()
        tally.add(probs[mine], labels[mine], 4)
        shared = tally.profiles()  # summed over the ranks
        from ccn.hierarchy import class_profiles
        assert torch.allclose(shared, class_profiles(probs, labels, 4))
    finally:
        torch.distributed.destroy_process_group()


def test_helpers_with_two_gloo_ranks(tmp_path):
    torch.multiprocessing.spawn(_helpers_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


def _agreement_worker(rank: int, world: int, init_file: str, answers: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from ccn.dist import check_ranks_agree
        from ccn.errors import CCNError
        check_ranks_agree({"train": 18, "test": 6}, torch.device("cpu"))  # the same data: nothing to say
        try:  # rank 1 read one training image more than rank 0
            check_ranks_agree({"train": 18 + rank, "test": 6}, torch.device("cpu"))
            said = "nothing"
        except CCNError as err:
            said = str(err)
        with open(f"{answers}.{rank}", "w") as handle:
            handle.write(said)
    finally:
        torch.distributed.destroy_process_group()


def test_ranks_that_read_different_data_all_stop_in_one_line(tmp_path):
    """Every rank stops, not only the one that differs: one that went on would wait for ever."""
    answers = str(tmp_path / "said")
    torch.multiprocessing.spawn(_agreement_worker, args=(2, str(tmp_path / "init"), answers), nprocs=2, join=True)
    for rank in (0, 1):
        said = open(f"{answers}.{rank}").read()
        assert said.startswith("the ranks read different numbers of images (train 18-19, test 6-6)"), said


RUN = ["--set", "model.norm=none", "--set", "model.width=8", "--set", "data.train_per_class=40",
       "--set", "data.test_per_class=20", "--set", "train.epochs=3", "--set", "train.batch_size=32",
       "--set", "train.progress=false", "--set", "train.lr=0.02"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and sys.platform == "win32", reason="needs torchrun")
def test_torchrun_two_processes_match_one(tmp_path):
    single = run_cli("train", *RUN, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "ccn", "train", *RUN, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    worst = max(float((a[k] - b[k]).abs().max() / (a[k].abs().max() + 1e-12)) for k in a if a[k].is_floating_point())
    print(f"largest relative difference of a weight tensor: {worst:.2e}")
    assert worst < 1e-4  # stated tolerance (2e-7 seen): float sums in another order, nothing more
    groups = [json.loads((tmp_path / run / "hierarchy.json").read_text())["groups"] for run in ("one", "two")]
    assert groups[0] == groups[1]
    top1 = [json.loads((tmp_path / run / "results.json").read_text())["top1"] for run in ("one", "two")]
    assert abs(top1[0] - top1[1]) <= 0.02
    assert two.stdout.count("run folder") == 1  # rank 0 alone reports and writes


# 400 digits less 20 % for validation: 10 global steps of 32 per epoch, each rank 16 images a step;
# dropout (each rank's own stream) and the weight average, so both must replay after the kill
KILLED = ["--set", "data.train_per_class=40", "--set", "data.test_per_class=10", "--set", "data.val_fraction=0.2",
          "--set", "model.width=8", "--set", "model.dropout=0.2", "--set", "train.epochs=2", "--set", "train.ema=0.9",
          "--set", "train.checkpoint_every=4", "--set", "train.deterministic=true", "--set", "train.progress=false"]


def _torchrun(*cli: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"CCN_FAULT": fault} if fault else {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "ccn", "train", *cli], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_torchrun_killed_inside_an_epoch_resumes_bit_identically(tmp_path):
    """Both ranks killed (kill -9) at step 7, after the step checkpoint of step 4; `--resume` under
    torchrun continues from it and ends on exactly the weights of an uninterrupted two-rank run."""
    whole = _torchrun(*KILLED, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _torchrun(*KILLED, "--out", str(tmp_path / "run"), fault="step-7")
    assert killed.returncode != 0 and not (tmp_path / "run" / "results.json").exists()
    resumed = _torchrun("--resume", str(tmp_path / "run"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {tmp_path / 'run'} in epoch 1 after batch 4 of 10" in resumed.stdout
    ours, theirs = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("run", "whole"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
