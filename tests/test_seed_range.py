"""Every seed the config allows (0 .. 2**32 - 1) trains: the seeds derived from it stay inside what
torch.Generator.manual_seed accepts, and those of the seeds that already worked are unchanged."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ccn.config import LIMITS
from ccn.data.loader import batch_seed, epoch_seed
from ccn.dist import stream_seed
from conftest import TINY_RUN, run_cli

LARGEST_SEED = int(LIMITS["seed"].high)
LARGEST_EPOCH = int(LIMITS["train.epochs"].high)


def test_derived_seeds_of_the_seeds_that_worked_are_the_old_formula():
    for seed, epoch, batch in [(0, 1, 0), (7, 3, 12), (200, 60, 389), (281_469_837, 1, 0)]:
        assert epoch_seed(seed, epoch) == seed * 1_000_003 + epoch
        assert batch_seed(seed, epoch, batch) == (seed * 1_000_003 + epoch) * 65_537 + batch


@pytest.mark.parametrize("seed", [281_469_838, 2**31, LARGEST_SEED])
def test_every_allowed_seed_gives_generator_seeds_torch_accepts(seed):
    """Seeds from 281,469,838 on made a batch seed above 2**64 - 1 ('Overflow when unpacking long long')."""
    generator = torch.Generator()
    for epoch, batch in [(1, 0), (LARGEST_EPOCH, 10**7)]:
        for derived in (epoch_seed(seed, epoch), batch_seed(seed, epoch, batch), stream_seed(seed, 7, epoch)):
            assert 0 <= derived < 2**64
            generator.manual_seed(derived)


def test_the_largest_seed_trains():
    """A ccn run (augmented batches, a shuffled order, a head swap) at seed 4294967295 crashed at its
    first batch."""
    import io

    from ccn import config as cfgmod
    from ccn.pipeline import run_training
    from ccn.tracking import RunLog
    config = cfgmod.load(None, TINY_RUN + [f"seed={LARGEST_SEED}", "train.batch_size=8"])
    results = run_training(config, None, RunLog(None, stream=io.StringIO()))
    assert results["steps"] == 2 * 4 and results["seed"] == LARGEST_SEED


def _train(args: list, out, fault=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"CCN_FAULT": fault} if fault else {})}
    return subprocess.run([sys.executable, "-m", "ccn", "train", *args, "--out", str(out)], capture_output=True,
                          text=True, env=env)


@pytest.mark.slow
def test_the_largest_seed_resumes_bit_identically(tmp_path):
    """Killed in epoch 2 and resumed, a run at seed 4294967295 ends on the uninterrupted run's weights."""
    settings = TINY_RUN + [f"seed={LARGEST_SEED}", "train.batch_size=8", "train.deterministic=true"]
    args = [a for item in settings for a in ("--set", item)]
    reference = _train(args, tmp_path / "ref")
    assert reference.returncode == 0, reference.stderr
    killed = _train(args, tmp_path / "killed", fault="step-6")  # 4 steps an epoch: in epoch 2
    assert killed.returncode == -9, killed.stderr
    resumed = run_cli("train", "--resume", str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr
    ours, theirs = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("killed", "ref"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
