"""Bad input not covered elsewhere: each ends in one line naming the problem and the fix, exit 2,
nothing existing overwritten. docs/bad-input.md lists every case and the test that checks it."""

import errno

import pytest
import torch

from ccn.checkpoint import save_weights
from ccn.files import atomic_write
from ccn.data.base import ImageDataset
from ccn.errors import CCNError, ConfigError, DataError
from conftest import run_cli

QUICK = ["--set", "train.epochs=2", "--set", "model.width=8", "--set", "train.progress=false",
         "--set", "data.train_per_class=20", "--set", "data.test_per_class=5"]


def _one_clean_line(result, *words):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_labels_out_of_range():
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    ds = ImageDataset("x", ["a", "b"], images, torch.tensor([0, 1, 2, 1]), images, torch.tensor([0, 1, 0, 1]))
    with pytest.raises(DataError, match=r"labels range over \[0, 2\] but there are 2 classes"):
        ds.check()


def test_empty_data_folder(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    result = run_cli("train", "--set", "data.name=folder", "--set", f"data.root={tmp_path}", "--out", str(tmp_path / "r"))
    _one_clean_line(result, "no class sub-folders")


def test_invalid_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("train: {epochs: 3\n")
    _one_clean_line(run_cli("train", "--config", str(tmp_path / "c.yaml")), "not valid YAML")


def test_full_disk_keeps_the_previous_file(tmp_path):
    model = torch.nn.Linear(2, 2)
    path = tmp_path / "model.safetensors"
    save_weights(model, path)
    before = path.read_bytes()

    def disk_full(tmp):
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CCNError, match="No space left on device.*previous file, if any, is unchanged"):
        atomic_write(path, disk_full)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_loss_that_becomes_nan_stops_the_run(tmp_path):
    out = tmp_path / "r"
    result = run_cli("train", *QUICK, "--set", "train.lr=1e30", "--out", str(out))
    _one_clean_line(result, "the training loss became nan", "lower train.lr")
    assert not (out / "results.json").exists()


def test_resume_with_an_edited_config_is_refused(tmp_path):
    import os
    import subprocess
    import sys
    out = tmp_path / "r"
    env = {**os.environ, "CCN_FAULT": "step-30"}  # after the checkpoint of epoch 1 (20 steps per epoch)
    killed = subprocess.run([sys.executable, "-m", "ccn", "train", *QUICK, "--set", "train.batch_size=10",
                             "--out", str(out)], capture_output=True, text=True, env=env)
    assert killed.returncode == -9 and (out / "checkpoint.safetensors").exists()
    (out / "config.yaml").write_text((out / "config.yaml").read_text().replace("lr: 0.05", "lr: 0.5"))
    _one_clean_line(run_cli("train", "--resume", str(out)), "another configuration")


def test_missing_run_folder_and_image(tmp_path):
    _one_clean_line(run_cli("evaluate", str(tmp_path / "nope")), "does not exist")
    _one_clean_line(run_cli("clusters", str(tmp_path)), "no hierarchy.json")


def test_torchrun_without_out_and_uneven_batch(tmp_path, monkeypatch):
    from ccn import config as cfgmod
    from ccn.data import load_dataset
    from ccn.plan import DataFacts, resolve
    config = cfgmod.load(None, ["train.batch_size=33"])
    with pytest.raises(CCNError, match="choose a multiple of 2"):
        resolve(config, DataFacts.of(load_dataset(config.data)), world_size=2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    _one_clean_line(run_cli("train", *QUICK), "pass --out")


def test_batches_of_one_image_are_refused_before_training():
    """T7 (issue 21): batch normalisation cannot train on one image per step; PyTorch raised deep
    inside the first step. batch_size=1 is out of range; one training image, or a batch that gives
    one image per torchrun process, is refused when the run is planned."""
    from ccn import config as cfgmod
    from ccn.data.base import ImageDataset
    from ccn.data.prepare import prepare_data
    from ccn.plan import DataFacts, resolve
    with pytest.raises(ConfigError, match="train.batch_size must be between 2 and .*batch normalisation"):
        cfgmod.load(None, ["train.batch_size=1"])
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    one = ImageDataset("tiny", ["a", "b"], images[:1], torch.tensor([0]), images[:2], torch.tensor([0, 1]))
    config = cfgmod.load(None, ["train.batch_size=2", "method.name=flat"])
    with pytest.raises(CCNError, match=r"the training split holds 1 image\(s\), too few to train"):
        resolve(config, DataFacts.of(one))
    two = ImageDataset("tiny", ["a", "b"], images[:2], torch.tensor([0, 1]), images[:2], torch.tensor([0, 1]))
    plan = resolve(config, DataFacts.of(two))
    assert plan.steps_per_epoch == len(prepare_data(plan, torch.device("cpu"), ds=two).train) == 1  # one batch of two
    with pytest.raises(CCNError, match=r"train.batch_size=2 gives batches of one image per process \(2 processes\)"
                                       r".*choose at least 4"):
        resolve(config, DataFacts.of(two.__class__(
            "tiny", ["a", "b"], images, torch.tensor([0, 1, 0, 1]), images[:2], torch.tensor([0, 1]))), world_size=2)


def test_resume_after_an_upgrade_that_added_a_config_key(tmp_path):
    """A checkpoint saved by an older ccn lacks the keys added since; they take their defaults, as
    they do when config.yaml is read, and the run resumes. A key this version does not know is refused."""
    import json
    import os
    import subprocess
    import sys
    from safetensors import safe_open
    from safetensors.torch import save_file
    out = tmp_path / "r"
    env = {**os.environ, "CCN_FAULT": "step-30"}  # after the checkpoint of epoch 1 (20 steps per epoch)
    killed = subprocess.run([sys.executable, "-m", "ccn", "train", *QUICK, "--set", "train.batch_size=10",
                             "--out", str(out)], capture_output=True, text=True, env=env)
    assert killed.returncode == -9
    checkpoint = out / "checkpoint.safetensors"

    def rewrite_saved_config(change) -> None:
        with safe_open(str(checkpoint), framework="pt") as handle:
            meta = handle.metadata()
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        state = json.loads(meta["ccn_state"])
        change(state["config"])
        save_file(tensors, str(checkpoint), metadata={**meta, "ccn_state": json.dumps(state)})

    original = checkpoint.read_bytes()
    rewrite_saved_config(lambda config: config["data"].pop("workers"))  # as saved before data.workers existed
    resumed = run_cli("train", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "results.json").read_text())["epochs"] == 2  # before the fix: exit 2, no results

    checkpoint.write_bytes(original)
    (out / "results.json").unlink()
    rewrite_saved_config(lambda config: config["train"].update(warp_drive=1))  # from a later version
    _one_clean_line(run_cli("train", "--resume", str(out)), "cannot read", "warp_drive")
