"""What the independent red team of issue 30 found after the round's fixes (session 10): the cache's
clean-up removed files ccn never wrote and followed another user's link, an image file that blocks
(a FIFO swapped in, /proc/kmsg) hung the decoder, predict's ** followed folder links for ever, resume
removed every .*.tmp of the run folder, a deeply nested cache entry was a traceback, and the report
replaced a FIFO or link at summary.json / report.md."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ccn.data import load_dataset, store
from ccn.data.images import UnreadableImage, decode_image
from ccn.errors import CCNError, WriteError
from ccn.predict import image_paths
from conftest import run_cli
from test_store import folder_config, make_folder

OTHER_UID = 65534  # nobody
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")


def _within(seconds: float, call):
    """call() in a thread; its result, or a failure when it is still running after `seconds` (a hang)."""
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(value=_safely(call)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: it hangs"
    return outcome["value"]


def _safely(call):
    try:
        return call()
    except Exception as err:  # noqa: BLE001 - the test inspects what was raised
        return err


def test_the_cache_clean_up_leaves_a_users_own_tmp_files_alone(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    notes = cache / ".notes.tmp"
    notes.write_text("mine")
    monkeypatch.setenv("CCN_CACHE_DIR", str(cache))
    load_dataset(folder_config(make_folder(tmp_path / "d"), store="disk"))
    assert notes.read_text() == "mine"
    abandoned = cache / ".folder-abc.u8.4242.abcd_123.tmp"  # the shape ccn's own temporaries have
    abandoned.write_bytes(b"x")
    store.private_cache_dir()
    assert not abandoned.exists() and notes.exists()


@ROOT_ONLY
def test_a_cache_folder_that_is_another_users_link_is_refused(tmp_path, monkeypatch):
    private = tmp_path / "priv"
    private.mkdir(mode=0o700)
    (private / ".draft.tmp").write_text("mine")
    planted = tmp_path / "cache"
    planted.symlink_to(private)
    os.lchown(planted, OTHER_UID, OTHER_UID)
    monkeypatch.setenv("CCN_CACHE_DIR", str(planted))
    with pytest.raises(WriteError, match="is a symbolic link of another user"):
        store.private_cache_dir()
    assert (private / ".draft.tmp").read_text() == "mine" and os.listdir(private) == [".draft.tmp"]


def test_an_image_that_is_a_fifo_is_one_line_not_a_hang(tmp_path):
    fifo = tmp_path / "swapped.png"
    os.mkfifo(fifo)
    err = _within(20, lambda: decode_image(fifo, 8))
    assert isinstance(err, UnreadableImage) and "is a FIFO, not a regular file" in str(err)


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/proc/kmsg"), reason="/proc/kmsg is read by root only")
def test_a_proc_file_that_blocks_is_one_line_not_a_hang(tmp_path):
    """/proc/kmsg is a regular file by its stat, and a blocking read waits for the kernel's next message."""
    link = tmp_path / "k.png"
    link.symlink_to("/proc/kmsg")
    err = _within(20, lambda: decode_image(link, 8))
    assert isinstance(err, UnreadableImage) and "cannot read image" in str(err)


def test_a_pattern_does_not_follow_folder_links(tmp_path, monkeypatch):
    (tmp_path / "g" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "g" / "a" / "x.png")
    (tmp_path / "g" / "a" / "up").symlink_to("..")
    (tmp_path / "g" / "self").symlink_to(".")
    monkeypatch.chdir(tmp_path)
    found = _within(20, lambda: image_paths(["g/**/*.png"]))
    assert [str(p) for p in found] == ["g/a/x.png"]


def test_resume_removes_only_ccns_own_temporaries(tiny_run, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "results.json").unlink()  # an interrupted run, to resume
    notes, killed = run / ".notes.tmp", run / ".results.json.4242.abcd_123.tmp"
    notes.write_text("mine")
    killed.write_text("half a save")
    result = run_cli("train", "--resume", str(run))
    assert notes.read_text() == "mine" and not killed.exists(), result.stderr


def test_a_deeply_nested_cache_entry_is_rebuilt_not_a_traceback(tmp_path):
    root = make_folder(tmp_path / "d")
    first = load_dataset(folder_config(root, store="disk"))
    for sidecar in store.private_cache_dir().glob("folder-*.json"):
        sidecar.write_text('{"format": ' + "[" * 100_000 + "]" * 100_000 + "}")
    again = load_dataset(folder_config(root, store="disk"))
    assert (again.train_images[:] == first.train_images[:]).all()


def test_the_report_does_not_replace_a_fifo_at_summary_json(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {data: {name: synthetic, num_classes: 4, num_groups: 2, train_per_class: 4, "
                    "test_per_class: 2}, model: {width: 4}, train: {epochs: 2, progress: false}}\n"
                    "variants: [flat]\nseeds: [0]\nreference: flat\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ccn", "experiment", "--config", str(grid), "--out", str(out)]
    assert subprocess.run(command, capture_output=True, timeout=300).returncode == 0
    (out / "summary.json").unlink()
    os.mkfifo(out / "summary.json")  # then the grid is run again: its report is written anew
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "is a FIFO, not a regular file" in result.stderr, result.stderr
    assert Path(out / "summary.json").is_fifo()


@pytest.mark.parametrize("value", ["x", 1e308, -1e308])
def test_a_checkpoint_whose_optimizer_numbers_are_not_numbers_is_one_line(tiny_run, tmp_path, value):
    """A string or 1e308 as a param group's momentum was a TypeError or overflow traceback at the first step."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "results.json").unlink()
    checkpoint = run / "checkpoint.safetensors"
    if not checkpoint.exists():
        pytest.skip("the tiny run keeps no checkpoint")
    with safe_open(str(checkpoint), "pt") as f:
        meta = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    state = json.loads(meta["ccn_state"])
    state["optimizer"]["param_groups"][0]["momentum" if value != -1e308 else "weight_decay"] = value
    meta["ccn_state"] = json.dumps(state)
    save_file(tensors, str(checkpoint), metadata=meta)
    result = run_cli("train", "--resume", str(run))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "param_groups[0]" in result.stderr and len(result.stderr.strip().splitlines()) == 1
