"""The data store (ccn.data.store): decoded images in memory or memory-mapped from the cache, the same
batches and weights from either, index views instead of copies, stores that are never half-used or
reused for other inputs, decoding workers that die with their parent, and hold-outs that never
empty a class (issue 17 items 1 and 6, issue 19 item 5, issue 21 H3, T4-T6, W3)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ccn import config as cfgmod
from ccn.config import DataConfig
from ccn.data import load_dataset, store
from ccn.data.base import channel_stats, split_per_class
from ccn.data.prepare import prepare_data
from ccn.plan import DataFacts, resolve
from ccn.data.store import ImageRows
from ccn.errors import ConfigError, DataError, WriteError
from conftest import (assert_auto_finishes_on_disk_and_memory_is_killed, memory_cgroup_unavailable, run_cli,
                      train_auto_and_memory_stores_under)


def make_folder(root: Path, classes: int = 3, train: int = 6, test: int = 2, size: int = 12) -> Path:
    """A folder of small PNGs whose pixels differ per image (a planted pattern the store must keep)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def folder_config(root: Path, **data) -> DataConfig:
    return DataConfig(name="folder", root=str(root), image_size=8, **data)


# ---------------------------------------------------------------- memory and disk hold the same images


def test_disk_store_maps_the_same_images_as_memory(tmp_path):
    root = make_folder(tmp_path / "d")
    memory = load_dataset(folder_config(root, store="memory", cache=False))
    disk = load_dataset(folder_config(root, store="disk"))
    assert memory.train_images.kind == "memory" and disk.train_images.kind == "disk"
    assert torch.equal(memory.train_images[:], disk.train_images[:])
    assert torch.equal(memory.test_images[:], disk.test_images[:])
    assert torch.equal(memory.train_labels, disk.train_labels)
    assert disk.notes["store"].startswith("disk: data.store=disk")
    # the disk store's pixels are the cache file's bytes, not a copy in memory
    (data_file,) = [p for p in store.cache_dir().glob("folder-*.u8") if p.stat().st_size == 18 * 3 * 8 * 8]
    on_disk = np.fromfile(data_file, dtype=np.uint8).reshape(18, 3, 8, 8)
    assert np.array_equal(on_disk, disk.train_images.base.numpy())
    assert _mapped_file_of(disk.train_images.base.data_ptr()) == str(data_file)


def _mapped_file_of(address: int) -> str:
    """The file /proc/self/maps names for the mapping that holds `address` ("" when anonymous)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        low, high = (int(v, 16) for v in fields[0].split("-"))
        if low <= address < high:
            return fields[5] if len(fields) == 6 else ""
    return ""


def test_disk_store_without_the_cache_leaves_no_file(tmp_path):
    root = make_folder(tmp_path / "d")
    ds = load_dataset(folder_config(root, store="disk", cache=False))
    assert ds.train_images.kind == "disk" and len(ds.train_images) == 18
    assert list(store.cache_dir().glob("*")) == []  # mapped, then unlinked: the map keeps the pages


def test_splits_and_caps_are_views_of_one_store(tmp_path):
    root = make_folder(tmp_path / "d")
    ds = load_dataset(folder_config(root, store="disk", train_per_class=5))
    config = cfgmod.load(None, ["data.val_fraction=0.2", "method.probe_set=holdout", "method.holdout_fraction=0.25"])
    data = prepare_data(resolve(config, DataFacts.of(ds)), torch.device("cpu"), ds=ds)
    for images in (data.train.images, data.test.images, data.probe.images):
        assert isinstance(images, ImageRows) and images.base is ds.train_images.base  # no pixel copied
    assert len(data.train.images) + len(data.test.images) + len(data.probe.images) == 15


def test_memory_and_disk_stores_train_identical_weights(tmp_path):
    from safetensors.torch import load_file

    from ccn.pipeline import run_training
    from ccn.tracking import RunLog
    root = make_folder(tmp_path / "d", classes=4, train=8, test=2)
    weights = {}
    for kind in ("memory", "disk"):
        config = cfgmod.load(None, [f"data.store={kind}", "data.name=folder", f"data.root={root}", "data.image_size=8",
                                    "data.val_fraction=0.25", "model.width=4", "train.epochs=2", "train.batch_size=8",
                                    "method.probe_epochs=1", "method.groups=2", "train.progress=false"])
        out = tmp_path / kind
        out.mkdir()
        run_training(config, out, RunLog(out, enabled=False))
        weights[kind] = load_file(out / "model.safetensors")
    assert weights["memory"].keys() == weights["disk"].keys()
    assert all(torch.equal(weights["memory"][k], weights["disk"][k]) for k in weights["memory"])


def test_store_statistics_are_exact_whatever_the_chunking(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d")
    disk = load_dataset(folder_config(root, store="disk"))
    whole = channel_stats(disk.train_images)
    monkeypatch.setattr("ccn.data.base.STATS_CHUNK_BYTES", 4 * 8 * 3 * 8 * 8)  # chunks of 4 images
    assert channel_stats(disk.train_images) == whole  # integer sums: the same bits for any chunking
    pixels = disk.train_images[:].to(torch.float64).div(255)
    assert np.allclose(whole[0], pixels.mean(dim=(0, 2, 3)).tolist(), rtol=0, atol=1e-12)
    assert np.allclose(whole[1], pixels.std(dim=(0, 2, 3)).tolist(), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- which store auto picks


def test_auto_picks_disk_when_the_data_exceeds_half_the_allowed_memory(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d")  # 24 images x 192 bytes = 4,608 bytes decoded
    monkeypatch.setattr(store, "memory_limits", lambda: [(8_000, "cgroup memory.max"), (10**10, "MemAvailable")])
    ds = load_dataset(folder_config(root))
    assert ds.train_images.kind == "disk"
    assert "is more than 50% of the 0.00 GiB this process may use (cgroup memory.max)" in ds.notes["store"]
    monkeypatch.setattr(store, "memory_limits", lambda: [(10_000, "cgroup memory.limit_in_bytes")])
    ds = load_dataset(folder_config(root))
    assert ds.train_images.kind == "memory" and "fits in 50%" in ds.notes["store"]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four copies on this machine would not fit
    ds = load_dataset(folder_config(root))
    assert ds.train_images.kind == "disk" and "shared by 4 processes" in ds.notes["store"]


def test_memory_limits_read_cgroup_v1_v2_and_meminfo(monkeypatch):
    files = {
        "/proc/self/cgroup": "12:memory:/job\n3:cpu:/job\n0::/job2\n",
        "/sys/fs/cgroup/memory/job/memory.limit_in_bytes": "1073741824\n",
        "/sys/fs/cgroup/job2/memory.max": "max\n",
        "/sys/fs/cgroup/unified/job2/memory.max": "536870912\n",
        "/proc/meminfo": "MemTotal: 100 kB\nMemAvailable:    2048 kB\n",
    }
    monkeypatch.setattr(store, "_read", lambda path: files.get(path, ""))
    assert sorted(store.memory_limits()) == [(2048 * 1024, "MemAvailable"), (536870912, "cgroup memory.max"),
                                             (1073741824, "cgroup memory.limit_in_bytes")]
    files["/sys/fs/cgroup/memory/job/memory.limit_in_bytes"] = "9223372036854771712\n"  # v1's "no limit"
    assert (9223372036854771712, "cgroup memory.limit_in_bytes") not in store.memory_limits()


def test_store_choices_that_cannot_apply_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="data.store=disk applies to data sets read from image files"):
        load_dataset(DataConfig(name="digits", store="disk"))


# ---------------------------------------------------------------- faults: never half-used, never reused


LOAD = "from ccn.config import DataConfig; from ccn.data import load_dataset; " \
       "load_dataset(DataConfig(name='folder', root={root!r}, image_size=8, store='disk'))"


def _killed_while_building(root: Path, point: str) -> None:
    env = {**os.environ, "CCN_FAULT": point}
    done = subprocess.run([sys.executable, "-c", LOAD.format(root=str(root))], env=env, capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr


@pytest.mark.parametrize("point", ["store-before-rename", "store-before-sidecar"])
def test_a_store_left_by_kill_9_is_rebuilt_not_used(tmp_path, monkeypatch, point):
    root = make_folder(tmp_path / "d")
    _killed_while_building(root, point)
    left = sorted(p.name for p in store.cache_dir().glob("*") if ".json" not in p.name)
    assert left  # the killed build left its data file (temporary or renamed) behind
    calls = []
    real = store.write_images
    monkeypatch.setattr(store, "write_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    ds = load_dataset(folder_config(root, store="disk"))
    assert calls == [1, 1]  # the killed train split was decoded again, not used; then the test split
    reference = load_dataset(folder_config(root, store="memory", cache=False))
    assert torch.equal(ds.train_images[:], reference.train_images[:])
    assert list(store.cache_dir().glob(".*.tmp")) == []  # the killed build's temporary file is gone too


def test_a_damaged_store_is_rebuilt(tmp_path):
    root = make_folder(tmp_path / "d")
    first = load_dataset(folder_config(root, store="disk"))
    expected = first.train_images[:].clone()
    del first
    for data_file in store.cache_dir().glob("*.u8"):
        with open(data_file, "r+b") as handle:  # cut short, as a full disk or a crash would leave it
            handle.truncate(data_file.stat().st_size - 5)
    again = load_dataset(folder_config(root, store="disk"))
    assert torch.equal(again.train_images[:], expected)
    for sidecar in store.cache_dir().glob("*.json"):  # a sidecar that is not ours
        sidecar.write_text('{"format": "ccn-store", "images": "many"}')
    assert torch.equal(load_dataset(folder_config(root, store="disk")).train_images[:], expected)


def test_a_store_of_other_files_or_settings_is_never_reused(tmp_path):
    root = make_folder(tmp_path / "d")
    first = load_dataset(folder_config(root, store="disk"))
    other_size = load_dataset(DataConfig(name="folder", root=str(root), image_size=10, store="disk"))
    assert other_size.train_images.shape == (18, 3, 10, 10)
    image = root / "train" / "class0" / "0.png"
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(image)  # same name, new content and mtime
    changed = load_dataset(folder_config(root, store="disk"))
    assert int(changed.train_images[0].max()) == 0 and int(first.train_images[0].max()) > 0
    # a sidecar copied onto another store's name (another key) is refused
    sidecars = sorted(store.cache_dir().glob("folder-*.json"))
    meta = store.StoreFile.for_split("folder", [(image, 0)], 8, store.StoreOptions())
    meta.sidecar.write_text(sidecars[0].read_text())
    assert meta.read_sidecar() is None


def test_a_full_disk_stops_a_disk_store_in_one_line(tmp_path, monkeypatch):
    import errno
    root = make_folder(tmp_path / "d")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(WriteError, match="No space left on device.*CCN_CACHE_DIR"):
        load_dataset(folder_config(root, store="disk"))
    assert list(store.cache_dir().glob("*")) == []  # nothing half-written left behind


# ---------------------------------------------------------------- H3: workers end with their parent


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


@pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
                    reason="needs Linux /proc and at least 2 CPUs (decoding workers)")
def test_decoding_workers_die_when_the_parent_is_killed(tmp_path):
    """H3. (Checked: with concurrent.futures' pool and no parent-death signal, the workers stay.)"""
    root = make_folder(tmp_path / "d", classes=2, train=200, test=1, size=8)  # 400 images: decoded in workers
    env = {**os.environ, "CCN_FAULT": "store-mid-decode"}
    child = subprocess.Popen([sys.executable, "-c", LOAD.format(root=str(root))], env=env,
                             start_new_session=True, stderr=subprocess.PIPE)
    assert child.wait(timeout=120) == -signal.SIGKILL, child.stderr.read()
    deadline = time.monotonic() + 5
    while _group_members(child.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _group_members(child.pid)
    for pid in left:  # never leave them behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert left == [], "decoding workers outlived their killed parent"


# ---------------------------------------------------------------- hold-outs never empty a class


def _old_split(labels, fraction, seed):
    """split_per_class as it was, to check that valid selections did not change."""
    generator = torch.Generator().manual_seed(seed)
    held = []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        take = max(1, round(fraction * len(idx))) if len(idx) > 1 else 0
        held.append(idx[torch.randperm(len(idx), generator=generator)[:take]])
    return torch.cat(held).sort().values


def test_split_keeps_a_training_image_of_every_class_and_the_old_selection_elsewhere():
    labels = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 3, 3, 3])  # class 0 has 2 images, class 2 one
    keep, held = split_per_class(labels, 0.75, 54321)
    assert set(labels[keep].tolist()) == {0, 1, 2, 3}  # class 0 (2 images, 75 %) keeps one
    old = _old_split(labels, 0.75, 54321)
    assert (labels[old] == 0).sum() == 2 and (labels[held] == 0).sum() == 1  # old: class 0 trained blind
    assert torch.equal(held[labels[held] != 0], old[labels[old] != 0])  # other classes: the same images
    for fraction in (0.1, 0.2, 0.5):  # where nothing degenerate happens, the selection is unchanged
        ys = torch.arange(10).repeat_interleave(17)
        assert torch.equal(split_per_class(ys, fraction, 12345)[1], _old_split(ys, fraction, 12345))


def test_validation_statistics_exclude_the_validation_images():
    config = cfgmod.load(None, ["data.val_fraction=0.5"])
    ds = load_dataset(config.data)
    data = prepare_data(resolve(config, DataFacts.of(ds)), torch.device("cpu"), ds=ds)
    keep, _ = split_per_class(ds.train_labels, 0.5, 54321)
    expected = channel_stats(ds.train_images[keep])
    assert np.allclose((data.normalize.mean.flatten() / 255).tolist(), expected[0])
    assert not np.allclose(expected[0], channel_stats(ds.train_images)[0], atol=1e-7)


@pytest.mark.parametrize("overrides, message", [
    pytest.param(["data.train_per_class=1", "data.val_fraction=0.2"], "holds out no image", id="empty-validation"),
    pytest.param(["data.train_per_class=1", "method.probe_set=holdout"], "holds out no image of 10 class",
                 id="empty-probe"),
])
def test_empty_validation_or_probe_set_is_one_line(overrides, message):
    sets = [arg for item in [*overrides, "train.epochs=2", "train.progress=false"] for arg in ("--set", item)]
    done = run_cli("train", *sets)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and message in done.stderr


def test_val_fraction_near_one_keeps_one_training_image_per_class(tmp_path):
    done = run_cli("train", "--set", "data.val_fraction=0.999", "--set", "train.epochs=2", "--set", "method.name=flat",
                   "--set", "train.progress=false", "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    import json
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["train_images"] == 10 and results["eval_set"] == "validation"


# ---------------------------------------------------------------- a run under a real memory limit


@pytest.mark.slow
@pytest.mark.skipif(bool(memory_cgroup_unavailable()), reason=memory_cgroup_unavailable() or "ok")
def test_a_run_finishes_on_data_larger_than_its_memory_limit(tmp_path):
    """1,104 images decoded at 512 px (868 MB) under a 700 MiB limit (a small run alone peaks near
    500 MB): auto picks disk and the run finishes; the same run with data.store=memory is killed, so
    the limit is real."""
    root = make_folder(tmp_path / "d", classes=2, train=550, test=2, size=16)
    keys = ["data.name=folder", f"data.root={root}", "data.image_size=512", "method.name=flat", "model.width=4",
            "train.epochs=1", "data.train_per_class=4", "train.progress=false"]
    assert_auto_finishes_on_disk_and_memory_is_killed(train_auto_and_memory_stores_under(700 * 2**20, keys, tmp_path, 600))


# ---------------------------------------------------------------- unreadable images and the cache (session 8)


def _emptied(files) -> None:
    for path in files:
        path.write_bytes(b"")  # as `: > file` leaves it: no decoder reads it


def _train_cli(root: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    keys = [f"data.root={root}", "data.name=folder", "data.image_size=8", "model.width=4", "train.epochs=2",
            "train.batch_size=4", "train.progress=false", *overrides]
    args = [a for key in keys for a in ("--set", key)]
    return subprocess.run([sys.executable, "-m", "ccn", "train", *args, "--out", str(root.parent / "run")],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _one_line_exit_2(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("ccn: error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_a_streamed_test_set_without_a_readable_image_is_refused_not_scored_black(tmp_path):
    """The stream used to score unreadable test images as black stand-ins ("top1 33.33% (9 test images)")."""
    root = make_folder(tmp_path / "f", train=4, test=3)
    _emptied((root / "test").glob("*/*.png"))
    result = _train_cli(root, "data.store=stream", "data.workers=0", "data.skip_bad_images=true")
    _one_line_exit_2(result, "images of the test split can be read (the first: ")
    assert not (root.parent / "run" / "results.json").exists()


@pytest.mark.parametrize("kind", ["memory", "disk", "stream"])
def test_a_class_without_a_readable_training_image_is_named_for_every_store(tmp_path, kind):
    """Memory and disk stores dropped the class silently (flat trained without it; ccn blamed the
    probe set), the stream trained it on black images only."""
    root = make_folder(tmp_path / "f", train=4, test=2)
    _emptied((root / "train" / "class1").glob("*.png"))
    _emptied([root / "test" / "class2" / "0.png"])  # another class keeps a readable test image: only class1 is lost
    with pytest.warns(UserWarning, match="skipped: cannot read image"), \
            pytest.raises(DataError, match=f"class folder {root / 'train' / 'class1'} holds no readable training "
                                           "images: all 4 were skipped as unreadable.*remove the class"):
        load_dataset(folder_config(root, store=kind, skip_bad_images=True, workers=0 if kind == "stream" else None))


def test_a_class_without_a_readable_training_image_stops_the_cli_in_one_line(tmp_path):
    root = make_folder(tmp_path / "f", train=4, test=2)
    _emptied((root / "train" / "class0").glob("*.png"))
    result = _train_cli(root, "data.store=memory", "data.skip_bad_images=true", "method.name=ccn")
    _one_line_exit_2(result, f"class folder {root / 'train' / 'class0'} holds no readable training images")


def test_a_cache_dir_that_is_a_file_stops_a_disk_store_in_one_line(tmp_path, monkeypatch):
    """It raised FileExistsError from deep inside StoreFile.write (exit 1)."""
    root = make_folder(tmp_path / "f", train=4, test=2)
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("not a folder")
    monkeypatch.setenv("CCN_CACHE_DIR", str(not_a_folder))
    for cache in (True, False):  # data.cache=false writes its unnamed store there too
        with pytest.raises(WriteError, match=f"cannot create the image cache folder {not_a_folder} .*set CCN_CACHE_DIR"):
            load_dataset(folder_config(root, store="disk", cache=cache))
    result = _train_cli(root, "data.store=disk", env={"CCN_CACHE_DIR": str(not_a_folder)})
    _one_line_exit_2(result, "set CCN_CACHE_DIR to a writable folder")
    assert not_a_folder.read_text() == "not a folder"  # the user's file is untouched


def test_a_run_resumed_on_data_that_changed_is_refused(tmp_path):
    """A checkpoint records how many images each split held: a resume that finds other counts (a file
    added or removed, or one that became readable with data.skip_bad_images) would continue its
    epochs on other images, so it stops in one line and leaves the checkpoint alone."""
    root = make_folder(tmp_path / "d")
    out = tmp_path / "r"
    env = {**os.environ, "CCN_FAULT": "before-results"}  # every epoch done and checkpointed, no results.json
    killed = subprocess.run([sys.executable, "-m", "ccn", "train", "--set", "data.name=folder", "--set",
                             f"data.root={root}", "--set", "data.image_size=8", "--set", "model.name=fastnet",
                             "--set", "model.width=8", "--set", "method.name=flat", "--set", "train.epochs=1",
                             "--set", "train.progress=false", "--out", str(out)], capture_output=True, text=True, env=env)
    assert killed.returncode == -9, killed.stderr
    checkpoint = (out / "checkpoint.safetensors").read_bytes()
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(root / "train" / "class0" / "extra.png")
    resumed = run_cli("train", "--resume", str(out))
    assert resumed.returncode == 2 and len(resumed.stderr.strip().splitlines()) == 1, resumed.stderr
    assert "started with {'train': 18, 'test': 6} images and now finds {'train': 19, 'test': 6}" in resumed.stderr
    assert (out / "checkpoint.safetensors").read_bytes() == checkpoint and not (out / "results.json").exists()
    (root / "train" / "class0" / "extra.png").unlink()  # the data as it was: the run finishes
    assert run_cli("train", "--resume", str(out)).returncode == 0
