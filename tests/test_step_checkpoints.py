"""train.checkpoint_every (checkpoints inside an epoch) and train.max_steps (a budget in steps)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ccn import config as cfgmod
from ccn.errors import CCNError, ConfigError
from ccn.plan import check_step_budget
from conftest import run_cli

# digits, 10 images per class: 100 training images, 3 steps of 32 per epoch
SMALL = ["data.train_per_class=10", "data.test_per_class=5", "model.width=8", "train.progress=false",
         "train.deterministic=true"]


def _method_run(overrides: list[str], out_dir=None, resume=False):
    from ccn.dist import World
    from ccn.pipeline import MethodRun
    from ccn.tracking import RunLog
    config = cfgmod.load(None, SMALL + overrides)
    run = MethodRun(config, out_dir, RunLog(None, enabled=False), World(), None, resume)
    rows = []
    run.log.epoch = rows.append  # the metrics rows, without a run folder
    return run, rows


def _weights(run) -> dict:
    return {k: v.clone() for k, v in run.model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- train.max_steps


def test_max_steps_fits_the_schedule_to_the_budget():
    """Five planned epochs cut to 6 steps train exactly what a 2-epoch run (6 steps) trains: the
    cosine schedule is fitted to the budget, not to train.epochs."""
    budget, _ = _method_run(["method.name=flat", "train.epochs=5", "train.max_steps=6"])
    results = budget.train()
    short, _ = _method_run(["method.name=flat", "train.epochs=2"])
    short.train()
    assert results["steps"] == 6 and budget.trainer.total_steps == 6
    assert _same(_weights(budget), _weights(short))


def test_max_steps_inside_an_epoch_cuts_it_short_and_still_scores_the_whole_test_set():
    from ccn.train import lr_factor
    run, rows = _method_run(["method.name=flat", "train.epochs=3", "train.max_steps=4"])
    results = run.train()
    assert [row["epoch"] for row in rows] == [1, 2]  # epoch 2 ended after its first batch
    assert results["steps"] == 4 and results["test_images"] == 50
    # the rate of the last step is the schedule's at step 3 of 4 (cosine, no warm-up)
    assert rows[-1]["lr"] == pytest.approx(run.config.train.lr * lr_factor(run.config.train, 3 / 4, 0.0))


def test_max_steps_that_ends_before_the_groups_is_refused_in_one_line(tmp_path):
    """A ccn run whose budget ends before clustering would train a flat model and call it ccn."""
    out = tmp_path / "run"
    result = run_cli("train", *[a for kv in SMALL for a in ("--set", kv)], "--set", "train.epochs=3",
                     "--set", "train.max_steps=3", "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ccn: error: train.max_steps=3 ends before classes are grouped after epoch 1 (3 steps per epoch): "
        "raise train.max_steps above 3, or use method.name=flat for a smoke test"]
    assert not out.exists()
    with pytest.raises(ConfigError, match="ends before large groups are split after epoch 2"):
        check_step_budget(20, 10, clustering_epoch=1, recursion_epoch=2)  # method.depth=2, 10 steps per epoch
    check_step_budget(21, 10, clustering_epoch=1, recursion_epoch=2)


@pytest.mark.parametrize("key,value,message", [
    ("train.checkpoint_every", "-1", "train.checkpoint_every must be between 0 and 1000000000 (optimizer steps; "
                                     "0: once per epoch), got -1"),
    ("train.checkpoint_every", "2.5", "train.checkpoint_every must be a whole number"),
    ("train.max_steps", "-5", "train.max_steps must be between 0 and 1000000000000 (0: off), got -5"),
], ids=["negative-checkpoint-every", "fractional-checkpoint-every", "negative-max-steps"])
def test_bad_step_values(key, value, message):
    with pytest.raises(ConfigError) as err:
        cfgmod.load(None, [f"{key}={value}"])
    assert message in str(err.value)


# ---------------------------------------------------------------- train.checkpoint_every


def test_step_checkpoints_change_nothing_without_dropout(tmp_path):
    """Saving every step (and restarting the random stream there) leaves a model without dropout
    exactly as a run with one checkpoint per epoch leaves it."""
    plain, plain_rows = _method_run(["train.epochs=3", "train.ema=0.9"], tmp_path / "a")
    (tmp_path / "a").mkdir()
    plain.train()
    stepped, stepped_rows = _method_run(["train.epochs=3", "train.ema=0.9", "train.checkpoint_every=1"], tmp_path / "b")
    (tmp_path / "b").mkdir()
    stepped.train()
    assert _same(_weights(plain), _weights(stepped))
    assert [r["loss"] for r in plain_rows] == [r["loss"] for r in stepped_rows]


def _save_mid_epoch(tmp_path, batch: int, sums: dict):
    from ccn.train import EpochProgress
    out = tmp_path / "run"
    out.mkdir()
    run, _ = _method_run(["method.name=flat", "train.epochs=2", "train.checkpoint_every=1"], out)
    run.save_checkpoint(1, EpochProgress(batch, sums, seen=32 * batch), epoch_seconds=1.0)
    return out


@pytest.mark.parametrize("batch,sums,message", [
    (3, {"loss": torch.tensor(1.0)}, "stops after batch 3 of epoch 1, but its epoch has 3 batches"),
    (1, {}, "its loss sums are missing"),
], ids=["step-checkpoint-batch-past-epoch", "step-checkpoint-without-sums"])
def test_a_damaged_step_checkpoint_is_named(tmp_path, batch, sums, message):
    out = _save_mid_epoch(tmp_path, batch, sums)
    run, _ = _method_run(["method.name=flat", "train.epochs=2", "train.checkpoint_every=1"], out, resume=True)
    with pytest.raises(CCNError, match=message):
        run.resume()


def test_a_step_checkpoint_with_a_negative_batch_is_named(tmp_path):
    from ccn.checkpoint import check_run_state, read_training_state
    out = _save_mid_epoch(tmp_path, 1, {"loss": torch.tensor(1.0)})
    _, state = read_training_state(out / "checkpoint.safetensors")
    check_run_state(state, out)  # as saved: fine
    with pytest.raises(CCNError, match="'batch' must be 0 or more"):
        check_run_state({**state, "batch": -1}, out)
    with pytest.raises(CCNError, match="lacks 'epoch_seen'"):
        check_run_state({k: v for k, v in state.items() if k != "epoch_seen"}, out)


def _gather_worker(rank: int, world: int, init_file: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from ccn.train import EpochProgress
        progress = EpochProgress(2, {"loss": torch.tensor(float(rank + 1))}, seen=10 + rank)
        progress.gather_to_main(rank, torch.device("cpu"))
        expected = (3.0, 21) if rank == 0 else (0.0, 0)  # rank 0 saves the whole epoch's sums
        assert (progress.sums["loss"].item(), progress.seen) == expected
    finally:
        torch.distributed.destroy_process_group()


def test_step_checkpoint_sums_are_gathered_on_the_saving_rank(tmp_path):
    torch.multiprocessing.spawn(_gather_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


# ---------------------------------------------------------------- kill -9 anywhere, resume, same weights

# 400 digits, 20 % kept for validation: 10 steps per epoch; a step checkpoint every 4 steps;
# dropout, so the random stream must replay too; EMA, so the average must be saved mid-epoch
KILLED = ["data.train_per_class=40", "data.test_per_class=10", "data.val_fraction=0.2", "model.width=8",
          "model.dropout=0.2", "train.epochs=3", "train.ema=0.9", "train.checkpoint_every=4",
          "train.deterministic=true", "train.progress=false"]
VARIANTS = {"ccn": ["method.name=ccn"],  # groups after epoch 1 (step 10)
            "flat": ["method.name=flat", "train.epochs=4", "train.max_steps=25"],  # ends in epoch 3
            # ccn on 48 JPEGs decoded per batch by 2 workers: 40 after the validation split, 5 steps per epoch
            "stream": ["data.name=folder", "data.root=JPEGS", "data.image_size=16", "data.store=stream",
                       "data.workers=2", "train.batch_size=8", "train.checkpoint_every=2"]}
STEPS = {"ccn": 30, "flat": 25, "stream": 15}


def _args(variant: str, jpegs) -> list[str]:
    return [a for kv in KILLED + VARIANTS[variant] for a in ("--set", kv.replace("JPEGS", str(jpegs)))]


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    from test_stream import make_jpeg_folder
    return make_jpeg_folder(tmp_path_factory.mktemp("jpegs") / "f")


@pytest.fixture(scope="module")
def references(tmp_path_factory, jpegs):
    outs = {}
    for variant in VARIANTS:
        outs[variant] = tmp_path_factory.mktemp("ref") / variant
        result = run_cli("train", *_args(variant, jpegs), "--out", str(outs[variant]))
        assert result.returncode == 0, result.stderr
    return outs


def _rows(out) -> list[dict]:
    timing = ("seconds", "images_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("variant,point,resumed_at", [
    ("ccn", "step-7", "in epoch 1 after batch 4 of 10"),  # probe stage, before clustering
    ("ccn", "during-save-step-8", "in epoch 1 after batch 4 of 10"),  # inside a step save: the last one holds
    ("ccn", "step-15", "in epoch 2 after batch 2 of 10"),  # after clustering (step 12 saved)
    ("ccn", "during-save-step-16", "in epoch 2 after batch 2 of 10"),
    ("flat", "step-25", "in epoch 3 after batch 4 of 10"),  # the budget's last step (step 24 saved)
    ("flat", "before-results", "after epoch 3"),  # the budget ended in epoch 3: nothing left to train
    ("stream", "step-7", "in epoch 2 after batch 1 of 5"),  # data.store=stream, after clustering (step 6 saved)
])
def test_killed_inside_an_epoch_and_resumed_is_bit_identical(variant, point, resumed_at, references, jpegs, tmp_path):
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-m", "ccn", "train", *_args(variant, jpegs), "--out", str(out)],
                            capture_output=True, text=True, env={**os.environ, "CCN_FAULT": point})
    assert killed.returncode == -9, killed.stderr
    resumed = run_cli("train", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out} {resumed_at}" in resumed.stdout
    ours, theirs = load_file(str(out / "model.safetensors")), load_file(str(references[variant] / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert _rows(out) == _rows(references[variant])  # the cut epoch's row too: loss sums were saved
    results = json.loads((out / "results.json").read_text())
    assert results["top1"] == json.loads((references[variant] / "results.json").read_text())["top1"]
    assert results["steps"] == STEPS[variant]
    assert not list(out.glob(".*.tmp"))
