"""Run folders under stress: one process per folder, --force that keeps the old run until the new one
has started, and full or read-only disks (real tmpfs mounts) that end in one line with the last good
checkpoint intact. docs/bad-input.md ("Command line and options", "Files ccn writes") lists each case."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from ccn import config as cfgmod
from ccn.checkpoint import read_training_state, save_training_state, save_weights
from ccn.files import atomic_write
from ccn.errors import WriteError
from ccn.hierarchy import build_hierarchy
from ccn.locks import LOCK_FILE, FolderLock
from ccn.pipeline import run_training
from ccn.plots import save_figure
from ccn.files import write_json
from ccn.tracking import RunLog, append_line
from conftest import run_cli

QUICK = ["--set", "model.width=8", "--set", "train.progress=false", "--set", "data.train_per_class=20",
         "--set", "data.test_per_class=5"]


def _one_clean_line(result, *words):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("ccn: error: "), result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


# ---------------------------------------------------------------- one process per folder


def test_a_locked_run_folder_is_refused_naming_its_holder(tmp_path):
    out = tmp_path / "run"
    with FolderLock(out, "run folder"):
        holder = (out / LOCK_FILE).read_text()
        assert f"pid {os.getpid()} on " in holder and "started " in holder
        _one_clean_line(run_cli("train", *QUICK, "--out", str(out)), "is in use by another ccn process",
                        f"pid {os.getpid()}")
        (out / "config.yaml").write_text("seed: 0\n")  # an interrupted run: --resume must wait as well
        _one_clean_line(run_cli("train", "--resume", str(out)), "is in use", f"pid {os.getpid()}")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]  # the refused runs wrote nothing
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {data: {name: synthetic}}\nvariants: [flat]\nseeds: [0]\n")
    with FolderLock(tmp_path / "exp", "experiment folder"):
        _one_clean_line(run_cli("experiment", "--config", str(grid), "--out", str(tmp_path / "exp")),
                        "experiment folder", "is in use", f"pid {os.getpid()}")
    assert not list((tmp_path / "exp").iterdir())  # no grid.yaml; the lock file went with the lock


def _holder(folder) -> str:
    try:
        return (folder / LOCK_FILE).read_text()
    except FileNotFoundError:
        return ""


def test_two_runs_started_together_into_one_folder(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "ccn", "train", *QUICK, "--set", "train.epochs=2",
                              "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not _holder(out) and first.poll() is None:  # the first run holds the folder
        assert time.time() < deadline
        time.sleep(0.05)
    second = run_cli("train", *QUICK, "--set", "train.epochs=3", "--out", str(out))
    _one_clean_line(second, "is in use by another ccn process", f"pid {first.pid}")
    assert first.wait(timeout=300) == 0, first.stderr.read()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and json.loads((out / "results.json").read_text())["epochs"] == 2
    assert "epochs: 2" in (out / "config.yaml").read_text() and not (out / LOCK_FILE).exists()


def test_the_lock_of_a_killed_process_is_free(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ccn.locks import FolderLock; "
                               f"FolderLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match=f"in use by another ccn process \\(pid {holder.pid} "):
        FolderLock(tmp_path).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / LOCK_FILE).exists()  # SIGKILL leaves the file, but the kernel dropped the lock
    with FolderLock(tmp_path) as lock:
        assert f"pid {os.getpid()}" in lock.path.read_text()
    assert not (tmp_path / LOCK_FILE).exists()


# ---------------------------------------------------------------- --force and failed starts


def _fake_old_run(out):
    out.mkdir(parents=True)
    old = {"config.yaml": "seed: 7\n", "results.json": '{"top1": 0.5}', "metrics.jsonl": '{"epoch": 1}\n',
           "model.safetensors": "old weights", "notes.txt": "the user's own file"}
    for name, text in old.items():
        (out / name).write_text(text)
    return old


def test_forced_run_with_a_typo_keeps_the_old_run(tmp_path):
    out = tmp_path / "run"
    old = _fake_old_run(out)
    result = run_cli("train", *QUICK, "--set", "data.name=folder", "--set", f"data.root={tmp_path / 'typo'}",
                     "--force", "--out", str(out))
    _one_clean_line(result, "does not exist")
    assert {p.name: p.read_text() for p in out.iterdir()} == old


def test_a_failed_start_leaves_nothing_that_blocks_the_same_command(tmp_path):
    out = tmp_path / "new" / "run"
    command = ["train", *QUICK, "--set", "data.name=folder", "--set", f"data.root={tmp_path / 'typo'}",
               "--out", str(out)]
    for _ in range(2):  # the second time the error is the same, not "already holds a run"
        _one_clean_line(run_cli(*command), "data folder", "does not exist")
        assert not out.exists()
    out.mkdir()
    _one_clean_line(run_cli(*command), "does not exist")
    assert out.is_dir() and not list(out.iterdir())  # a folder the user made is kept


def test_forced_run_replaces_only_the_old_runs_files(tmp_path):
    out = tmp_path / "run"
    _fake_old_run(out)
    (out / "dendrogram.png").write_text("old figure")
    result = run_cli("train", *QUICK, "--set", "train.epochs=2", "--set", "method.name=flat", "--force",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "notes.txt").read_text() == "the user's own file" and not (out / "dendrogram.png").exists()
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((out / "results.json").read_text())["epochs"] == 2


# ---------------------------------------------------------------- full and read-only disks


@contextmanager
def _mounted(path, options):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'mount failed'}): the full-disk and "
                    "read-only tests need root (or CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    with _mounted(tmp_path / "disk", "size=4m") as path:
        yield path


def _remount(path, mode):
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)


def _fill(disk, leave: int = 0):
    """Fill `disk` until only `leave` bytes are free; returns the filler file."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
    return filler


def _writers(folder):
    """Every kind of write a run or an experiment makes, into `folder`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return {
        "checkpoint.safetensors": lambda p: save_training_state(p, model, optimizer, {"epoch": 2}),
        "model.safetensors": lambda p: save_weights(model, p),
        "results.json": lambda p: write_json(p, {"top1": 0.5, "pad": "x" * 20000}),
        "metrics.jsonl": lambda p: append_line(p, json.dumps({"epoch": 2, "pad": "x" * 20000})),
        "accuracy.png": lambda p: save_figure(plt.subplots(figsize=(6, 6))[0], p),
        "report.md": lambda p: atomic_write(p, lambda tmp: tmp.write_text("y" * 20000)),
    }


def test_every_write_on_a_full_disk_is_one_error_and_keeps_the_previous_file(small_disk):
    writers = _writers(small_disk)
    for name, write in writers.items():
        write(small_disk / name)
    before = {name: (small_disk / name).read_bytes() for name in writers}
    filler = _fill(small_disk)
    for name, write in writers.items():
        with pytest.raises(WriteError, match=f"could not write .*{name} \\(No space left on device\\)"):
            write(small_disk / name)
        assert (small_disk / name).read_bytes() == before[name], name
    assert read_training_state(small_disk / "checkpoint.safetensors")[1]["epoch"] == 2
    assert not [p for p in small_disk.iterdir() if p.name.endswith(".tmp")]
    filler.unlink()


def test_every_write_into_a_read_only_folder_is_one_error(small_disk):
    writers = _writers(small_disk)
    _remount(small_disk, "ro")
    for name, write in writers.items():
        with pytest.raises(WriteError, match=f"could not write .*{name} \\(Read-only file system\\)"):
            write(small_disk / name)


def test_training_on_a_disk_that_fills_up_stops_cleanly_and_resumes(small_disk):
    flat = [*QUICK, "--set", "method.name=flat"]
    overrides = [arg for arg in flat if arg != "--set"] + ["train.epochs=1"]
    (small_disk / "probe").mkdir()
    run_training(cfgmod.load(None, overrides), small_disk / "probe", RunLog(small_disk / "probe", stream=io.StringIO()))
    size = (small_disk / "probe" / "checkpoint.safetensors").stat().st_size  # the size of one checkpoint
    subprocess.run(["rm", "-r", str(small_disk / "probe")], check=True)
    out = small_disk / "run"
    filler = _fill(small_disk, leave=size * 3 // 2)  # room for one checkpoint, not for its replacement
    full = run_cli("train", *flat, "--set", "train.epochs=3", "--out", str(out))
    _one_clean_line(full, "No space left on device", "previous file, if any, is unchanged",
                    f"continue with `ccn train --resume {out}`")
    assert read_training_state(out / "checkpoint.safetensors")[1]["epoch"] == 1  # the last good checkpoint
    assert not (out / "results.json").exists()

    _remount(small_disk, "ro")
    _one_clean_line(run_cli("train", "--resume", str(out)), "Read-only file system", "make it writable")
    _remount(small_disk, "rw")
    filler.unlink()
    resumed = run_cli("train", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3] and json.loads((out / "results.json").read_text())["epochs"] == 3


def test_clusters_plot_into_a_read_only_run_folder(small_disk):
    profiles = np.random.default_rng(0).dirichlet(np.ones(6), size=6)
    build_hierarchy(profiles, [f"c{i}" for i in range(6)], num_groups=2).save(small_disk / "hierarchy.json")
    _remount(small_disk, "ro")
    result = run_cli("clusters", str(small_disk), "--plot")
    _one_clean_line(result, "dendrogram.png", "Read-only file system")
    assert "group  1" in result.stdout
