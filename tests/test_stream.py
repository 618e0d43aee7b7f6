"""data.store=stream: image files decoded per batch in worker processes, the same batches as memory."""

import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ccn import config as cfgmod
from ccn.data.base import channel_stats
from ccn.config import DataConfig
from ccn.data import load_dataset, stream
from ccn.data.store import ImageRows, decode_split, select
from ccn.data.stream import StreamSource, close_pool, shared_pool
from ccn.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_jpeg_folder(tmp_path_factory.mktemp("stream") / "f")


def make_jpeg_folder(root):
    """4 classes of 40 x 48 JPEGs, each class a tinted noise (learnable), 12 train and 4 test per class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for c in range(4):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                tint = np.zeros((40, 48, 3))
                tint[..., c % 3] = 150 + 60 * (c // 3)
                pixels = np.clip(tint + rng.normal(0, 40, tint.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.jpg", quality=90)
    return root


def _files(folder) -> list:
    return sorted((folder / "train").glob("*/*.jpg"))


def test_streamed_batches_are_the_decoded_images_for_any_worker_count(folder):
    paths = _files(folder)
    decoded, _ = decode_split([(p, 0) for p in paths], 16, False)
    order = [torch.tensor([5, 0, 47, 3]), torch.tensor([9]), torch.arange(10, 40)]
    for workers in (0, 1, 3):
        source = StreamSource(paths, 16, workers, skip_bad=False)
        got = list(source.batches(order))
        assert [tuple(b.shape) for b in got] == [(4, 3, 16, 16), (1, 3, 16, 16), (30, 3, 16, 16)]
        assert all(torch.equal(b, decoded[idx]) for b, idx in zip(got, order))
        view = source.take(torch.tensor([47, 5]))  # an index view (caps, validation split): no decoding
        assert view.shape == (2, 3, 16, 16) and torch.equal(view.gather([0, 1]), decoded[[47, 5]])
    # main's exact integer statistics, whichever store holds the images
    assert channel_stats(StreamSource(paths, 16, 2, False)) == channel_stats(ImageRows(decoded))
    # ImageNet's fit (shorter side resized, centred square) reaches the workers too
    squares, _ = decode_split([(p, 0) for p in paths], 16, False, fit="centre_crop")
    assert not torch.equal(squares, decoded)  # the 40 x 48 files: the two fits differ
    [got] = StreamSource(paths, 16, 2, False, fit="centre_crop").batches([torch.arange(48)])
    assert torch.equal(got, squares)
    # TensorBatches.take (airbench's data-dependent initialisation) reads a stream as well
    from ccn.data.augment import Normalize
    from ccn.data.loader import TensorBatches
    batches = TensorBatches(StreamSource(paths, 16, 2, False), torch.zeros(48, dtype=torch.long), 8,
                            Normalize([0.5] * 3, [0.2] * 3))
    assert torch.equal(batches.take(torch.tensor([3, 40])), decoded[[3, 40]])


def test_the_decoding_workers_live_on_from_one_epoch_to_the_next(folder):
    """Starting them again every epoch cost the stream about 10 % of its throughput (bench_stream)."""
    from ccn.data.augment import Augment, Normalize
    from ccn.data.loader import TensorBatches
    paths = _files(folder)
    close_pool(2)
    batches = TensorBatches(StreamSource(paths, 16, 2, False), torch.zeros(len(paths), dtype=torch.long), 8,
                            Normalize([0.5] * 3, [0.2] * 3), Augment(crop_padding=2))
    seen = []
    for epoch in (1, 2):
        assert sum(len(x) for x, _ in batches.epoch(epoch)) == 48
        seen.append([process.pid for process in shared_pool(2).processes])
    assert seen[0] == seen[1] and all(process.is_alive() for process in shared_pool(2).processes)
    abandoned = batches.epoch(3)
    next(abandoned)
    abandoned.close()  # jobs still in flight: the pool is closed so the next epoch starts clean
    assert [process.pid for process in shared_pool(2).processes] != seen[0]
    close_pool(2)


def _trained_weights(folder, overrides: list[str]) -> dict:
    from ccn.dist import World
    from ccn.pipeline import MethodRun
    from ccn.tracking import RunLog
    config = cfgmod.load(None, ["data.name=folder", f"data.root={folder}", "data.image_size=16", "model.width=8",
                                "train.epochs=2", "train.batch_size=16", "train.progress=false",
                                "train.deterministic=true", "data.val_fraction=0.25", *overrides])
    run = MethodRun(config, None, RunLog(None, enabled=False), World(), None)
    run.train()
    return {k: v.clone() for k, v in run.model.state_dict().items()}


@pytest.mark.slow  # three short runs: about 10 s on 2 quiet cores
def test_stream_trains_the_model_the_memory_store_trains_for_0_and_2_workers(folder):
    """ccn (probe epoch, groups, three-level head) with a validation split: the same weights bit for
    bit whether the images are held in memory or decoded per batch by 0 or 2 worker processes."""
    memory = _trained_weights(folder, ["data.store=memory"])
    for workers in (0, 2):
        streamed = _trained_weights(folder, ["data.store=stream", f"data.workers={workers}"])
        assert streamed.keys() == memory.keys()
        assert all(torch.equal(streamed[k], memory[k]) for k in memory), f"{workers} workers"


def _folder_with_a_bad_file(folder, tmp_path):
    paths = _files(folder)[:6]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a JPEG")
    return paths[:3] + [bad] + paths[3:], bad


def test_an_unreadable_image_is_black_with_skip_and_named_without(folder, tmp_path):
    paths, bad = _folder_with_a_bad_file(folder, tmp_path)
    with pytest.warns(UserWarning, match=f"skipped: cannot read image {bad}.*a black image stands in"):
        batch = next(StreamSource(paths, 16, 2, skip_bad=True).batches([torch.arange(7)]))
    assert batch.shape == (7, 3, 16, 16) and int(batch[3].max()) == 0 and int(batch[2].max()) > 0
    with warnings.catch_warnings():  # warned once per file, not once per epoch
        warnings.simplefilter("error")
        source = StreamSource(paths, 16, 2, skip_bad=True)
        source._warned.add(str(bad))
        next(source.batches([torch.arange(7)]))
    with pytest.raises(DataError, match=f"cannot read image {bad} .*: remove or replace it, or set "
                                        "data.skip_bad_images=true"):
        list(StreamSource(paths, 16, 2, skip_bad=False).batches([torch.arange(4), torch.arange(4, 7)]))


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_files_are_found_before_training_and_left_out_of_both_splits(tmp_path, monkeypatch, workers):
    """With data.skip_bad_images the stream scores and trains on what the memory store holds: unreadable
    test images are left out of the score and the image count (they were scored as black stand-ins)."""
    root = make_jpeg_folder(tmp_path / "f")
    bad = [root / "test" / "c1" / "0.jpg", root / "test" / "c3" / "2.jpg", root / "train" / "c0" / "5.jpg"]
    for path in bad:
        path.write_bytes(b"")
    config = dict(name="folder", root=str(root), image_size=16, skip_bad_images=True)
    with pytest.warns(UserWarning) as caught:
        streamed = load_dataset(DataConfig(**config, store="stream", workers=workers))
    assert sorted(str(w.message) for w in caught if str(w.message).startswith("skipped: cannot read image")) == \
        sorted(f"skipped: cannot read image {path} (the file is empty, 0 bytes)" for path in bad)
    with pytest.warns(UserWarning):
        memory = load_dataset(DataConfig(**config, store="memory", cache=False))
    for split, n in (("train", 47), ("test", 14)):
        images, labels = getattr(streamed, f"{split}_images"), getattr(streamed, f"{split}_labels")
        assert len(images) == len(labels) == n and not set(map(str, bad)) & set(images.paths)
        assert torch.equal(labels, getattr(memory, f"{split}_labels"))
        assert torch.equal(images.gather(torch.arange(n)), getattr(memory, f"{split}_images")[:])
    if workers == 0:  # a second load (a resume, another torchrun rank) reads the scan from the cache
        decoded, real = [], stream.decode_many
        monkeypatch.setattr(stream, "decode_many", lambda paths, *a, **k: decoded.extend(paths) or real(paths, *a, **k))
        with pytest.warns(UserWarning, match="skipped"):
            again = load_dataset(DataConfig(**config, store="stream", workers=0))
        assert again.test_images.paths == streamed.test_images.paths
        assert sorted(decoded) == sorted(map(str, bad))  # only the listed files, to see that they still fail


def test_a_failure_that_went_away_does_not_drop_the_image_for_ever(tmp_path, monkeypatch):
    """A file that failed once (a transient I/O error) is in the cached scan; the next load finds it
    readable and scans again instead of dropping a good image for good."""
    root = make_jpeg_folder(tmp_path / "f")
    flaky = root / "train" / "c0" / "1.jpg"
    real = stream.decode_image

    def failing_once(path, *args, **kwargs):
        if Path(path) == flaky:
            raise stream.UnreadableImage(f"cannot read image {path} (Too many open files)")
        return real(path, *args, **kwargs)

    config = DataConfig(name="folder", root=str(root), image_size=16, skip_bad_images=True, store="stream", workers=0)
    monkeypatch.setattr(stream, "decode_image", failing_once)
    with pytest.warns(UserWarning, match="Too many open files"):
        first = load_dataset(config)
    assert str(flaky) not in first.train_images.paths
    monkeypatch.setattr(stream, "decode_image", real)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is skipped now
        again = load_dataset(config)
    assert str(flaky) in again.train_images.paths and len(again.train_images) == len(first.train_images) + 1


def test_a_worker_that_dies_is_named_not_waited_for(folder):
    close_pool(2)
    batches = StreamSource(_files(folder), 16, 2, skip_bad=False).batches([torch.arange(8)] * 50)
    next(batches)  # the pool now holds the next batches' jobs
    victim = shared_pool(2).processes[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(timeout=10)
    started = time.monotonic()
    with pytest.raises(DataError, match=rf"image decoding worker ccn-decode-1 \(pid {victim.pid}\) was killed by "
                                        "SIGKILL: the run cannot go on"):
        list(batches)
    assert time.monotonic() - started < 10
    fresh = shared_pool(2).processes  # the next use starts a fresh pool of live workers
    assert victim not in fresh and all(p.is_alive() for p in fresh)
    close_pool(2)


@pytest.mark.parametrize("when", ["holding-a-task", "before-taking-one"])
def test_a_stopped_worker_is_named_with_its_files_after_the_worker_timeout(folder, when):
    """A worker stopped by SIGSTOP (the shape of an NFS stall) stopped training for ever, with no message."""
    files = _files(folder)
    who = r"image decoding worker ccn-decode-0 \(pid {pid}\)" if when == "holding-a-task" else \
        r"image decoding worker ccn-decode-0 \(pid \d+\), ccn-decode-1 \(pid \d+\)"
    # A worker stopped between two tasks holds none, and the other one then decodes every batch: on a
    # loaded machine that happens now and then, so the stop is tried again until it catches a task.
    for _ in range(5):
        close_pool(2)
        source = StreamSource(files, 16, 2, skip_bad=False, worker_timeout=2)
        pool = shared_pool(2, 2)
        victim = pool.processes[0]
        if when == "before-taking-one":
            for process in pool.processes:
                os.kill(process.pid, signal.SIGSTOP)
        batches = source.batches([torch.arange(8)] * 50)
        if when == "holding-a-task":
            next(batches)
            os.kill(victim.pid, signal.SIGSTOP)  # it holds, or is about to take, one of the next batches' tasks
        started = time.monotonic()
        try:
            list(batches)
        except DataError as err:
            assert re.search(who.format(pid=victim.pid) + r" has produced nothing for 2 s \(data.worker_timeout\) "
                             rf"while decoding {folder}/train/\S+\.jpg.*: it is stopped or stuck reading them", str(err))
            assert time.monotonic() - started < 30
            return
        finally:
            for process in pool.processes:
                os.kill(process.pid, signal.SIGKILL)
            close_pool(2)
        assert when == "holding-a-task", "workers stopped before any task decoded every batch"
    pytest.fail("in 5 tries the stopped worker never held a task: the timeout was never exercised")


def test_a_worker_that_died_between_epochs_is_replaced_not_reported(folder):
    """An idle pool holds no job, so nothing is lost: the next epoch starts a fresh pool."""
    close_pool(2)
    victim = shared_pool(2).processes[0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(timeout=10)
    source = StreamSource(_files(folder), 16, 2, skip_bad=False)
    assert [len(b) for b in source.batches([torch.arange(8)] * 3)] == [8, 8, 8]
    assert victim not in shared_pool(2).processes
    close_pool(2)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_end_with_their_parent_even_after_kill_9():
    script = ("import time; from ccn.data.stream import shared_pool; pool = shared_pool(2); "
              "print(*[p.pid for p in pool.processes], flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


@pytest.mark.parametrize("overrides,message", [
    (["data.store=stream"], "data.store=stream applies to data sets read from image files \\(caltech101, folder, "
                            "imagenet, omniglot, tinyimagenet\\); digits is read whole into memory: "
                            "use data.store=auto or memory"),
    (["data.workers=2"], "data.workers only applies when data.store=stream"),
    (["data.store=stream", "data.workers=-1"], "data.workers must be between 0 and 256"),
], ids=["stream-of-in-memory-data", "workers-without-stream", "negative-workers"])
def test_bad_stream_settings(overrides, message):
    with pytest.raises(ConfigError, match=message):
        from ccn.data import load_dataset
        load_dataset(cfgmod.load(None, overrides).data)


def test_channel_statistics_are_kept_in_the_cache_and_a_damaged_entry_is_recomputed(folder, tmp_path):
    paths = _files(folder)[:10]
    source = StreamSource(paths, 16, 0, skip_bad=False, stats_cache=tmp_path)
    first = channel_stats(source)
    [entry] = tmp_path.glob("stream-stats-*.json")
    entry.write_text('{"mean": [0.5, 0.5], "std": [1, 1, 1]}')  # damaged: two means
    assert channel_stats(source) == first
    entry.write_text('{"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}')  # a valid entry is read, not recomputed
    assert channel_stats(source) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    assert channel_stats(source.take(torch.arange(5))) != ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])  # other files, other key


def test_the_scan_adds_up_the_channel_statistics_without_decoding_again(tmp_path, monkeypatch):
    """With data.skip_bad_images the unreadable-file scan decodes every image once; the channel
    statistics of any view of the split (here without its bad file, then a validation-like subset)
    are added from the sums it kept: the same numbers, exactly, as a second decoding pass gives."""
    root = make_jpeg_folder(tmp_path / "f")
    (root / "train" / "c2" / "3.jpg").write_bytes(b"")
    decoded, real = [], stream.decode_many
    monkeypatch.setattr(stream, "decode_many", lambda paths, *a, **k: decoded.extend(paths) or real(paths, *a, **k))
    config = DataConfig(name="folder", root=str(root), image_size=16, skip_bad_images=True, store="stream",
                        workers=0, cache=False)
    with pytest.warns(UserWarning, match="skipped"):
        ds = load_dataset(config)
    assert len(decoded) == 64  # the scan: 48 training and 16 test files, each once
    view = select(ds.train_images, torch.arange(0, 47, 3))
    decoded.clear()
    added_up = channel_stats(view)
    assert decoded == []
    view.pixel_sums = None  # as without the scan: a decoding pass over the view's 16 files
    assert channel_stats(view) == added_up and len(decoded) == 16
