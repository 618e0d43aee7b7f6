"""The decoded-image cache trusts nothing it did not write (issue 30, the cache and memory part):
files are read only when they are regular files of bounded size (ccn.files.open_regular), the cache
folder and its entries must be private, every store entry's content and labels are checksummed,
temporaries of killed writers are removed by any later run (judged by a lock, not a pid), a stalled
stream worker is named, and a run's own memory does not grow with its data."""

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ccn.data import load_dataset, store
from ccn import config as cfgmod
from ccn.errors import ConfigError, WriteError
from ccn.files import UnsafeFile, open_regular, read_regular_bytes
from conftest import (REPO, assert_auto_finishes_on_disk_and_memory_is_killed, memory_cgroup_unavailable,
                      train_auto_and_memory_stores_under)
from test_store import folder_config, make_folder

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
OTHER_UID = 65534  # nobody


# ---------------------------------------------------------------- opening a regular file with a limit


def test_read_regular_bytes_reads_a_small_regular_file(tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(b"{}")
    assert read_regular_bytes(path, 10, "sidecar") == b"{}"


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "f.json"
    os.mkfifo(fifo)
    done = []
    worker = threading.Thread(target=lambda: done.append(_problem(fifo, 100)), daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert done == ["is a FIFO, not a regular file"]  # it used to block for ever


def test_a_device_or_endless_file_is_refused(tmp_path):
    link = tmp_path / "zero.json"
    link.symlink_to("/dev/zero")
    assert _problem(link, 100) == "is a character device, not a regular file"
    assert _problem(link, 100, follow_links=False) == "is a symbolic link"
    big = tmp_path / "big.json"
    big.write_bytes(b"x" * 101)
    assert _problem(big, 100) == "is 101 bytes, more than the 100 bytes a thing may have"
    assert _problem(tmp_path, 100) == "is a folder"
    assert _problem(tmp_path / "missing", 100) == "does not exist"
    with pytest.raises(UnsafeFile, match=f"^thing {big} is 101 bytes.*: remove it$"):
        open_regular(big, 100, "thing", fix="remove it")


@ROOT_ONLY
def test_a_private_read_refuses_files_of_others_or_writable_by_others(tmp_path):
    path = tmp_path / "entry.json"
    path.write_bytes(b"{}")
    path.chmod(0o600)
    assert _problem(path, 100, private=True) is None
    path.chmod(0o622)
    assert _problem(path, 100, private=True) == "is writable by other users"
    path.chmod(0o600)
    os.chown(path, OTHER_UID, -1)
    assert _problem(path, 100, private=True) == f"is owned by another user (uid {OTHER_UID})"
    assert _problem(path, 100) is None  # not private: any regular file


def _problem(path: Path, limit: int, **options):
    try:
        read_regular_bytes(path, limit, "thing", **options)
    except UnsafeFile as err:
        return err.problem
    return None


# ---------------------------------------------------------------- the cache folder: per user and private


def test_the_default_cache_is_private_and_an_empty_cache_dir_means_unset(tmp_path, monkeypatch):
    """CCN_CACHE_DIR="" wrote the stores into the working folder; the default folder was 0755."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    for value in ("", None):
        if value is None:
            monkeypatch.delenv("CCN_CACHE_DIR")
        else:
            monkeypatch.setenv("CCN_CACHE_DIR", value)
        assert store.private_cache_dir() == tmp_path / "home" / ".cache" / "ccn"
        assert stat.S_IMODE(os.stat(tmp_path / "home" / ".cache" / "ccn").st_mode) == 0o700
    (tmp_path / "home" / ".cache" / "ccn").chmod(0o755)  # as an older ccn left it
    store.private_cache_dir()
    assert stat.S_IMODE(os.stat(tmp_path / "home" / ".cache" / "ccn").st_mode) == 0o700
    load_dataset(folder_config(make_folder(tmp_path / "d"), store="disk"))
    assert not list(tmp_path.glob("folder-*"))  # nothing in the working folder


@pytest.mark.parametrize("shared", ["world-writable", pytest.param("other-owner", marks=ROOT_ONLY)])
def test_a_shared_cache_dir_is_used_through_a_private_sub_folder(tmp_path, monkeypatch, shared):
    """A CCN_CACHE_DIR others can write to (or own) was read as it stood: another user's planted store was used."""
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    cache.chmod(0o1777)
    if shared == "other-owner":
        cache.chmod(0o755)
        os.chown(cache, OTHER_UID, -1)
    monkeypatch.setenv("CCN_CACHE_DIR", str(cache))
    store._said.clear()
    root = make_folder(tmp_path / "d")
    expected = "is writable by other users" if shared == "world-writable" else r"is owned by another user \(uid \d+\)"
    with pytest.warns(UserWarning, match=f"the image cache folder {cache} {expected}: ccn keeps its cache in its "
                                         f"private sub-folder {cache}/ccn-{os.geteuid()}"):
        load_dataset(folder_config(root, store="disk"))
    private = cache / f"ccn-{os.geteuid()}"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700 and list(private.glob("folder-*.u8"))
    assert not list(cache.glob("folder-*"))


@ROOT_ONLY
def test_a_private_sub_folder_planted_by_another_user_is_refused_in_one_line(tmp_path, monkeypatch):
    cache = tmp_path / "shared-cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o1777)
    planted = cache / f"ccn-{os.geteuid()}"
    planted.mkdir(mode=0o777)
    os.chown(planted, OTHER_UID, -1)
    monkeypatch.setenv("CCN_CACHE_DIR", str(cache))
    with pytest.raises(WriteError, match=f"the image cache folder {planted} is owned by another user .*folder of your own"):
        load_dataset(folder_config(make_folder(tmp_path / "d"), store="disk"))
    planted.rmdir()
    planted.symlink_to(tmp_path)  # a link there: not followed
    with pytest.raises(WriteError, match=f"the image cache folder {planted} is a symbolic link"):
        load_dataset(folder_config(make_folder(tmp_path / "d"), store="disk"))


# ---------------------------------------------------------------- entries: private, regular, checksummed


def _built(tmp_path, kind="disk"):
    root = make_folder(tmp_path / "d")
    first = load_dataset(folder_config(root, store=kind))
    return root, first.train_images[:].clone(), first.train_labels.clone()


def _entries(suffix):
    return sorted(store.private_cache_dir().glob(f"folder-*{suffix}"))


def _counting_decodes(monkeypatch) -> list:
    calls = []
    real = store.write_images
    monkeypatch.setattr(store, "write_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("kind", ["disk", "memory"])
def test_a_sidecar_with_edited_labels_of_the_same_count_is_rebuilt(tmp_path, monkeypatch, kind):
    root, images, labels = _built(tmp_path, kind)
    for sidecar in _entries(".json"):
        meta = json.loads(sidecar.read_text())
        meta["labels"] = list(reversed(meta["labels"]))  # the same count, other labels
        sidecar.write_text(json.dumps(meta))
    calls = _counting_decodes(monkeypatch)
    with pytest.warns(UserWarning, match="does not match the checksum in its sidecar.*rebuilt"):
        again = load_dataset(folder_config(root, store=kind))
    assert calls == [1, 1] and torch.equal(again.train_labels, labels) and torch.equal(again.train_images[:], images)


def test_a_zeroed_store_of_the_same_size_is_rebuilt(tmp_path, monkeypatch):
    root, images, _ = _built(tmp_path)
    for data in _entries(".u8"):
        data.write_bytes(bytes(data.stat().st_size))
    with pytest.warns(UserWarning, match="does not match the checksum"):
        again = load_dataset(folder_config(root, store="disk"))
    assert torch.equal(again.train_images[:], images)


@pytest.mark.parametrize("change", ["world-writable", pytest.param("other-owner", marks=ROOT_ONLY)])
def test_a_store_entry_of_another_user_or_writable_by_others_is_never_read(tmp_path, monkeypatch, change):
    """Another user's planted folder-KEY.u8 + .json (the key is computable) was used silently."""
    root, images, labels = _built(tmp_path)
    for entry in _entries(".u8") + _entries(".json"):
        if change == "world-writable":
            entry.chmod(0o666)
        else:
            os.chown(entry, OTHER_UID, -1)
    calls = _counting_decodes(monkeypatch)
    expected = "is writable by other users" if change == "world-writable" else r"is owned by another user \(uid \d+\)"
    with pytest.warns(UserWarning, match=f"image cache sidecar .* {expected}: it is not read, and is rebuilt"):
        again = load_dataset(folder_config(root, store="disk"))
    assert calls == [1, 1] and torch.equal(again.train_images[:], images)
    for entry in _entries(".u8") + _entries(".json"):  # rebuilt as ours, owner-only
        assert entry.stat().st_uid == os.geteuid() and stat.S_IMODE(entry.stat().st_mode) == 0o600


@pytest.mark.parametrize("plant", ["fifo", "dev-zero", "folder"])
@pytest.mark.parametrize("entry", [".json", ".u8"])
def test_a_special_file_at_a_store_entry_is_not_read_and_does_not_hang(tmp_path, monkeypatch, plant, entry):
    """A FIFO at folder-KEY.json blocked train and evaluate for ever; /dev/zero read until memory ran out."""
    root, images, _ = _built(tmp_path)
    for path in _entries(entry):
        path.unlink()
        {"fifo": os.mkfifo, "dev-zero": lambda p: p.symlink_to("/dev/zero"), "folder": os.mkdir}[plant](path)
    result = _within(30, lambda: load_dataset(folder_config(root, store="disk")))
    assert torch.equal(result.train_images[:], images)


def test_a_stale_store_after_touch_r_is_not_used(tmp_path):
    """Content replaced with the same size and modification time (touch -r, a tar with 1-second times)."""
    root, images, _ = _built(tmp_path)
    image = root / "train" / "class0" / "0.png"
    before = image.stat()
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(tmp_path / "black.png")
    data = (tmp_path / "black.png").read_bytes()
    image.write_bytes(data[:before.st_size].ljust(before.st_size, b"\0"))  # same size
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime
    again = load_dataset(folder_config(root, store="disk", skip_bad_images=True))
    assert int(again.train_images[0].max()) == 0  # the new content, not the store of the old one


def test_a_file_name_that_is_not_utf8_is_cached(tmp_path):
    """The cache key and the stream's cache path raised UnicodeEncodeError."""
    root = make_folder(tmp_path / "d")
    odd = root / "train" / "class0" / os.fsdecode(b"\xff\xfe.png")
    (root / "train" / "class0" / "0.png").rename(odd)
    for kind in ("disk", "stream"):
        ds = load_dataset(folder_config(root, store=kind, workers=0))
        assert len(ds.train_images) == 18


@pytest.mark.parametrize("entry", ["stream-stats", "stream-unreadable"])
@pytest.mark.parametrize("plant", ["fifo", "dev-zero", "world-writable"])
def test_a_stream_cache_entry_that_is_not_ours_is_not_read_and_does_not_hang(tmp_path, entry, plant):
    root = make_folder(tmp_path / "d")
    config = folder_config(root, store="stream", workers=0, skip_bad_images=True)
    first = load_dataset(config)
    first_stats = first.channel_stats()
    paths = sorted(store.private_cache_dir().glob(f"{entry}-*.json"))
    assert paths
    for path in paths:
        if plant == "world-writable":
            path.write_text('{"mean": [0.5, 0.5, 0.5], "std": [9, 9, 9], "unreadable": [[0, "planted"]]}')
            path.chmod(0o666)
            continue
        path.unlink()
        os.mkfifo(path) if plant == "fifo" else path.symlink_to("/dev/zero")
    again = _within(30, lambda: load_dataset(config))
    assert _within(30, again.channel_stats) == first_stats and len(again.train_images) == 18


def _within(seconds: float, call):
    """call() in a thread; fails (instead of hanging the suite) when it has not returned in time."""
    result, failure = [], []
    worker = threading.Thread(target=lambda: _capture(call, result, failure), daemon=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        worker.start()
        worker.join(timeout=seconds)
    assert not worker.is_alive(), f"still blocked after {seconds} s"
    if failure:
        raise failure[0]
    return result[0]


def _capture(call, result, failure):
    try:
        result.append(call())
    except BaseException as err:  # noqa: BLE001 - handed to the test thread
        failure.append(err)


# ---------------------------------------------------------------- temporaries of writers that are gone


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ccn.files import locked_temporary_file
    tmp, lock = locked_temporary_file(Path(sys.argv[1]))
    tmp.write_bytes(b"x" * 1000)
    print(tmp, flush=True)
    time.sleep(600)
""")


def _holding_writer(target: Path) -> tuple[subprocess.Popen, Path]:
    writer = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    return writer, Path(writer.stdout.readline().strip())


def test_a_killed_writers_temporary_is_removed_and_a_live_ones_kept_whatever_its_pid(tmp_path):
    """Temporaries of a killed build stayed for ever (~98 MB each); a live writer's was deleted when its
    pid was not one of this PID namespace's (a container, another host sharing the cache)."""
    root = make_folder(tmp_path / "d")
    cache = store.private_cache_dir()
    killed, killed_tmp = _holding_writer(cache / "folder-0123.u8")
    killed.kill()
    killed.wait()
    live, live_tmp = _holding_writer(cache / "folder-4567.u8")
    foreign = live_tmp.with_name(".folder-4567.u8.999999999.abcdef.tmp")  # a pid that is not alive here
    os.link(live_tmp, foreign)  # the same locked file under a name with another namespace's pid
    try:
        load_dataset(folder_config(root, store="disk"))
        assert not killed_tmp.exists()
        assert live_tmp.exists() and foreign.exists()
    finally:
        live.kill()
        live.wait()
    load_dataset(folder_config(root, store="disk"))
    assert not live_tmp.exists() and not foreign.exists()


def test_the_temporary_cleaner_never_follows_a_link_nor_touches_files_of_others(tmp_path):
    cache = store.private_cache_dir()
    target = tmp_path / "precious.u8"
    target.write_bytes(b"keep")
    (cache / ".folder-1.u8.1.abc.tmp").symlink_to(target)
    store.private_cache_dir()
    assert target.read_bytes() == b"keep" and (cache / ".folder-1.u8.1.abc.tmp").is_symlink()


def test_a_file_system_without_locks_writes_and_judges_no_temporary_abandoned(tmp_path, monkeypatch):
    """flock failing with ENOLCK (some network file systems) must neither loop for ever nor delete a
    temporary whose writer may be alive."""
    import errno
    import fcntl

    from ccn import files

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    cache = store.private_cache_dir()
    unjudged = cache / ".folder-2.u8.1.abc.tmp"
    unjudged.write_bytes(b"x")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    files.write_json(cache / "entry.json", {"a": 1})
    assert json.loads((cache / "entry.json").read_text()) == {"a": 1}
    assert files.remove_abandoned_temporaries(cache) == [] and unjudged.exists()


@pytest.mark.parametrize("cache, point", [(False, "store-rows-written"), (True, "store-rows-written"),
                                          (True, "store-before-rename")])
def test_a_build_killed_mid_write_leaves_a_temporary_the_next_run_removes(tmp_path, cache, point):
    """data.cache=false left a full-size store file behind when killed; no later run removed it."""
    root = make_folder(tmp_path / "d")
    load = ("from ccn.config import DataConfig; from ccn.data import load_dataset; "
            f"load_dataset(DataConfig(name='folder', root={str(root)!r}, image_size=8, store='disk', cache={cache}))")
    done = subprocess.run([sys.executable, "-c", load], env={**os.environ, "CCN_FAULT": point,
                                                             "PYTHONPATH": str(REPO / "src")}, capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert list(store.cache_dir().glob(".*.tmp"))  # what the killed build left (private_cache_dir removes them)
    load_dataset(folder_config(root, store="disk", cache=False))
    assert list(store.private_cache_dir().glob(".*")) == []


@pytest.mark.parametrize("overrides, message", [
    (["data.store=stream", "data.worker_timeout=0"], "data.worker_timeout"),
    (["data.store=stream", "data.worker_timeout=100000"], "data.worker_timeout"),
    (["data.store=disk", "data.worker_timeout=5"], "data.worker_timeout"),
])
def test_a_worker_timeout_out_of_range_or_without_a_stream_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        cfgmod.load(None, ["data.name=folder", "data.root=/nowhere", *overrides])
    assert cfgmod.load(None, ["data.name=folder", "data.root=/nowhere", "data.store=stream",
                              "data.worker_timeout=2.5"]).data.worker_timeout == 2.5


# ---------------------------------------------------------------- a run under a real memory limit


LIMIT = 512 * 2**20  # a small `ccn train` alone (python, torch, decoding workers) takes ~290 MB


def _jpeg_folder(root: Path, images: int, pixels: int) -> Path:
    """Smooth 128 px JPEGs (small files, quick to decode), 2 classes, a twentieth of them test images."""
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / ("test" if i % 20 == 0 else "train") / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((pixels, pixels), Image.BILINEAR).save(folder / f"{i}.jpg", quality=85)
    return root


@pytest.mark.slow
@pytest.mark.skipif(bool(memory_cgroup_unavailable()), reason=memory_cgroup_unavailable() or "ok")
def test_a_run_finishes_under_a_cgroup_limit_below_its_decoded_images(tmp_path):
    """13,107 images at 128 px decode to 1.2x a 512 MiB limit: auto picks the disk store, and its build and
    training keep the process's own memory flat (the freed decode buffers handed back, unwritten pages
    flushed: 285 MB of anonymous memory at its peak, as for 600 images), so the run finishes; the same
    run with data.store=memory is killed, so the limit is real. A guard of the promise: issue 30 saw
    ~820 MB while a 24,000-image store was built under 1 GiB, which did not reproduce on the 2-core VM
    (the code before this change passes here too; benchmarks/RESULTS.md)."""
    images = int(1.2 * LIMIT / (3 * 128 * 128))
    root = _jpeg_folder(tmp_path / "d", images, 128)
    keys = ["data.name=folder", f"data.root={root}", "data.image_size=128", "method.name=flat", "model.width=4",
            "train.max_steps=5", "train.batch_size=16", "train.eval_batch_size=16", "train.progress=false"]
    assert_auto_finishes_on_disk_and_memory_is_killed(train_auto_and_memory_stores_under(LIMIT, keys, tmp_path, 900))
