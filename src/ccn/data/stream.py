"""`data.store=stream`: training and test images decoded from their compressed files batch by batch,
for data too big even for a decoded copy on disk (ImageNet at 224 px: 193 GB decoded, 140 GB JPEG).

A `StreamSource` is an ImageSource (ccn.data.store) like the memory and disk stores' ImageRows:
`shape`, `len()`, index views (`take`, for caps and the validation and probe hold-outs, no image
decoded), `gather(indices)` (those images decoded in this process) and `batches(index_lists)`, which
decodes batch after batch in `data.workers` processes (each batch split among them), up to AHEAD
batches per worker ahead of the training step. Decoding is ccn.data.images.decode_image, the decoder
and resize of the other stores, so the bytes are identical. Nothing random happens here: the order
comes from (seed, epoch) and the augmentation draws from (seed, epoch, batch) in ccn.data.loader,
after the images arrive, so the weights are the same for any number of workers or ranks, and the
same as with a memory or disk store.

With data.skip_bad_images=true the unreadable files are found before training, by one decoding
pass over both splits (`StreamSource.unreadable`, its answer kept in the cache so a resumed run and
the other torchrun ranks read it), and left out of both splits, each named in one warning, as the
memory and disk stores leave them out: no evaluation set scores an image that could not be read, and
the batches are the same for any number of workers or ranks. A file that becomes unreadable after
that pass is decoded as a black image (label kept) and named in one warning. The same pass keeps each
image's pixel sums, from which the channel statistics are added up without decoding again. With
skip_bad_images=false the run stops with one line naming the file. A worker that dies is named in
one line, never waited for; workers end with the process that started them (daemon processes, and
on Linux a parent-death signal).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import queue
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from ccn.data import heap
from ccn.data.images import BAD_IMAGE_FIX, UnreadableImage, decode_image
from ccn.data.processes import die_with_parent, how_it_ended
from ccn.data.statistics import added, pixel_sums, stats_from_sums
from ccn.errors import DataError, WriteError
from ccn.files import UnsafeFile, file_stamp, read_regular_bytes, write_json

AHEAD = 2  # batches in flight per worker, ahead of the one being trained on (as DataLoader's prefetch_factor)
POLL_SECONDS = 0.5  # how often a waiting parent checks that its workers are alive
SCAN_ROWS = 64  # images per worker in each batch of the unreadable-file scan
WORKER_TIMEOUT = 300.0  # data.worker_timeout's default: seconds a worker may hold one task without an answer
NAMED_FILES = 3  # files named in the message about a stalled worker
ENTRY_LIMIT = 256 * 2**20  # bytes of a cache entry read back (the unreadable files of a big data set stay below)


def default_workers(requested: Optional[int]) -> int:
    """data.workers, or min(8, CPUs) when it is left empty."""
    return requested if requested is not None else min(8, os.cpu_count() or 1)


def decode_many(paths: Sequence[str], size: int, fit: str = "stretch") -> tuple[np.ndarray, list[tuple[int, str]]]:
    """(k, 3, size, size) uint8 images, channels first as training wants them (the transposing copy
    made here, in the workers, not in the training process), and [(position, why)] for those that
    could not be read (black); `fit` as in ccn.data.images.decode_image (ImageNet: centre_crop)."""
    out = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    bad = []
    for i, path in enumerate(paths):
        try:
            out[i] = decode_image(Path(path), size, fit).transpose(2, 0, 1)
        except UnreadableImage as err:
            bad.append((i, str(err)))
    return out, bad


def _worker(tasks, results, parent: int, index: int) -> None:
    """Decode (job, paths, size, fit) tasks until told to stop or the parent is gone. Each task is
    announced (index, job, None, None) when taken, then answered (index, job, images, bad): the
    parent can tell which worker holds which files, and for how long."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        try:
            task = tasks.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if os.getppid() != parent:  # where no parent-death signal exists
                return
            continue
        if task is None:
            return
        job, paths, size, fit = task
        results.put((index, job, None, None))
        results.put((index, job, *decode_many(paths, size, fit)))


class DecodePool:
    """`workers` decoding processes fed through one task queue; results come back keyed by job."""

    def __init__(self, workers: int, timeout: float = WORKER_TIMEOUT):
        self.reader = None  # the StreamSource whose batches() is reading results now, if any
        self.timeout = timeout  # data.worker_timeout
        self.files: dict = {}  # job -> the paths sent with it, until answered
        self.busy: dict[int, tuple] = {}  # worker index -> (job, when it took it)
        self.heard = time.monotonic()  # when a worker last said anything
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.tasks, self.results = context.Queue(), context.Queue()
        self.processes = [context.Process(target=_worker, args=(self.tasks, self.results, os.getpid(), i),
                                          name=f"ccn-decode-{i}", daemon=True) for i in range(workers)]
        for process in self.processes:
            process.start()

    def submit(self, job, paths: list[str], size: int, fit: str) -> None:
        if not self.files:
            self.heard = time.monotonic()  # the wait for an answer starts now, not when the pool last worked
        self.files[job] = paths
        self.tasks.put((job, paths, size, fit))

    def result(self):
        """The next finished (job, images, bad); DataError naming the worker as soon as one has died
        (the job it held would never come back), or has held its task for data.worker_timeout seconds
        without an answer (stopped, or stuck reading from a stalled disk or network file system)."""
        while True:
            self._check_alive()
            self._check_stalled()
            try:
                index, job, images, bad = self.results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            self.heard = time.monotonic()
            if images is None:
                self.busy[index] = (job, self.heard)
                continue
            self.busy.pop(index, None)
            self.files.pop(job, None)
            return job, images, bad

    def _check_stalled(self) -> None:
        now = time.monotonic()
        for index, (job, since) in self.busy.items():
            if now - since > self.timeout:
                self._stalled(f"image decoding worker {self.processes[index].name} (pid {self.processes[index].pid})",
                              self.files.get(job, []))
        if self.files and now - self.heard > self.timeout:  # stopped before it said which task it took (or while
            # it held the task queue's lock, which an idle worker holds while it waits): the files are those waited for
            stuck = [f"{p.name} (pid {p.pid})" for p in self.processes if _process_state(p.pid) in ("T", "t", "D")]
            who = f"image decoding worker {', '.join(stuck)}" if stuck else "an image decoding worker"
            self._stalled(who, [path for paths in self.files.values() for path in paths])

    def _stalled(self, who: str, paths: list[str]) -> None:
        more = len(paths) - NAMED_FILES
        named = ", ".join(paths[:NAMED_FILES]) + (f" and {more} more" if more > 0 else "")
        self.close()
        raise DataError(f"{who} has produced nothing for {self.timeout:g} s (data.worker_timeout) while decoding "
                        f"{named}: it is stopped or stuck reading them (a stalled disk or network file system); check "
                        "that these files can be read, then continue with `ccn train --resume RUN` (or raise "
                        "data.worker_timeout for files that are slow to read)")

    def _check_alive(self) -> None:
        for process in self.processes:
            if process.exitcode is not None:
                self.close()
                raise DataError(f"image decoding worker {process.name} (pid {process.pid}) "
                                f"{how_it_ended(process.exitcode)}: the run cannot go on without its images; "
                                "check free memory (dmesg) and continue with `ccn train --resume RUN`")

    def close(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
        for process in self.processes:
            process.join(timeout=5)
        self.tasks.close()
        self.results.close()
        self.processes = []


def _process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (T: stopped, D: waiting on a disk or network file system), or ""."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


_POOLS: dict[int, DecodePool] = {}  # one pool per worker count, shared by the train, test and probe sources


def shared_pool(workers: int, timeout: float = WORKER_TIMEOUT) -> DecodePool:
    """The running pool of `workers` processes (started at first use, kept across epochs; started
    again when one of its workers has died while it stood idle, since it then held no job)."""
    pool = _POOLS.get(workers)
    if pool is not None and any(process.exitcode is not None for process in pool.processes):
        close_pool(workers)
        pool = None
    if pool is None or not pool.processes:
        _POOLS[workers] = DecodePool(workers, timeout)
    _POOLS[workers].timeout = timeout
    return _POOLS[workers]


def close_pool(workers: int) -> None:
    pool = _POOLS.pop(workers, None)
    if pool is not None:
        pool.close()


class StreamSource:
    """Images read from files when asked for, never held whole; see the module notes."""

    dtype = torch.uint8
    ndim = 4
    kind = "stream"

    def __init__(self, paths: Sequence[Path], size: int, workers: int, skip_bad: bool,
                 stats_cache: Optional[Path] = None, fit: str = "stretch", stamp: Optional[str] = None,
                 worker_timeout: float = WORKER_TIMEOUT):
        self.paths = [str(p) for p in paths]
        self.worker_timeout = worker_timeout  # data.worker_timeout: see DecodePool.result
        self.size, self.workers, self.skip_bad, self.fit = size, workers, skip_bad, fit
        self.stats_cache = stats_cache  # folder for the channel statistics (data.cache), or None
        self.stamp = stamp  # the reader's stand-in for a stat per file in the statistics' key (ccn.data.store.cache_key)
        self._warned: set[str] = set()
        # int64 (n, 6) of each image's pixel sums (ccn.data.statistics), kept by the unreadable-file scan
        # so the channel statistics need no second decoding pass; views of the source keep their rows
        self.pixel_sums: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), 3, self.size, self.size)

    def _paths(self, indices) -> list[str]:
        return [self.paths[i] for i in torch.as_tensor(indices, dtype=torch.long).reshape(-1).tolist()]

    def take(self, indices) -> "StreamSource":
        """An index view (caps, validation split, hold-out): the same files, no image decoded."""
        view = StreamSource(self._paths(indices), self.size, self.workers, self.skip_bad, self.stats_cache,
                            self.fit, self.stamp, self.worker_timeout)
        if self.pixel_sums is not None:
            view.pixel_sums = self.pixel_sums[torch.as_tensor(indices, dtype=torch.long).reshape(-1).numpy()]
        return view

    def gather(self, indices) -> torch.Tensor:
        """uint8 (n, 3, S, S) CPU tensor of the images at `indices`, decoded in this process."""
        paths = self._paths(indices)
        return self._as_tensor(*decode_many(paths, self.size, self.fit), paths)

    def chunks(self, rows: int) -> Iterator[torch.Tensor]:
        """Every image in order, `rows` at a time, decoded by the workers (for the channel statistics)."""
        yield from self.batches(torch.arange(start, min(start + rows, len(self))) for start in range(0, len(self), rows))

    def batches(self, index_lists: Iterable) -> Iterator[torch.Tensor]:
        """gather() of each index list in turn, decoded by the workers up to AHEAD x workers batches in
        advance (in this process when data.workers=0)."""
        for images, bad, paths in self._decoded(index_lists):
            yield self._as_tensor(images, bad, paths)

    def _decoded(self, index_lists: Iterable) -> Iterator[tuple[np.ndarray, list[tuple[int, str]], list[str]]]:
        """(images, [(position, why) of those that could not be read], paths) of each index list in turn."""
        if self.workers == 0:
            for indices in index_lists:
                paths = self._paths(indices)
                yield (*decode_many(paths, self.size, self.fit), paths)
            return
        pending = iter(enumerate(index_lists))
        waiting: dict[int, list[str]] = {}  # batch number -> its paths
        done: dict[int, dict[int, tuple]] = {}  # batch number -> {chunk start: (images, bad)}
        pool = shared_pool(self.workers, self.worker_timeout)
        if pool.reader is not None:  # job keys are batch numbers: two readers would take each other's images
            raise RuntimeError(f"the decoding pool of {self.workers} workers is still read by an unfinished "
                               "batches() generator: finish or close it first")
        pool.reader = self
        try:
            for _ in range(AHEAD * self.workers):
                self._submit(pool, pending, waiting)
            number = 0
            while number in waiting:
                paths = waiting[number]
                chunks = done.setdefault(number, {})
                while sum(len(images) for images, _ in chunks.values()) < len(paths):
                    (batch, start), images, bad = pool.result()
                    done.setdefault(batch, {})[start] = (images, bad)
                del waiting[number], done[number]
                parts = [chunks[start] for start in sorted(chunks)]
                self._submit(pool, pending, waiting)
                offsets = np.cumsum([0] + [len(images) for images, _ in parts])
                bad = [(int(offset) + i, why) for (_, found), offset in zip(parts, offsets) for i, why in found]
                yield self._joined([images for images, _ in parts]), bad, paths
                number += 1
                del parts, chunks
                if number % heap.TRIM_EVERY == 0:  # the freed batches back to the system (ccn.data.heap)
                    heap.trim()
        except BaseException:
            if waiting:  # an abandoned epoch leaves jobs in the queues: start clean next time
                close_pool(self.workers)
            raise
        finally:
            pool.reader = None

    def _joined(self, parts: list[np.ndarray]) -> np.ndarray:
        """One batch from its chunks (an empty index list, a rank's share of a tiny last batch, has none)."""
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.zeros((0, 3, self.size, self.size), dtype=np.uint8)

    def _submit(self, pool: DecodePool, pending, waiting: dict) -> None:
        """Send the next batch as one chunk per worker."""
        try:
            number, indices = next(pending)
        except StopIteration:
            return
        paths = self._paths(indices)
        waiting[number] = paths
        step = max(1, -(-len(paths) // self.workers))
        for start in range(0, len(paths), step):
            pool.submit((number, start), paths[start:start + step], self.size, self.fit)

    def _as_tensor(self, images: np.ndarray, bad: list[tuple[int, str]], paths: list[str]) -> torch.Tensor:
        for position, why in bad:
            if not self.skip_bad:
                raise DataError(f"{why}: {BAD_IMAGE_FIX}")
            if paths[position] not in self._warned:
                self._warned.add(paths[position])
                warnings.warn(f"skipped: {why}; a black image stands in for it (label kept) in every epoch",
                              stacklevel=2)
        return torch.from_numpy(images)

    def channel_stats(self, summed: Callable) -> tuple[list[float], list[float]]:
        """Exact integer statistics over every image: added from the pixel sums of the unreadable-file
        scan where it ran (data.skip_bad_images), else summed(self) (ccn.data.base: one decoding pass
        over the files, through `chunks`). Kept in the cache (keyed by the files, their sizes and times
        or the reader's stamp, the image size and fit), so a resumed run and the other torchrun ranks
        (which start after rank 0) read them instead."""
        path = self._stats_path()
        saved = _read_stats(path) if path is not None else None
        if saved is not None:
            return saved
        if self.pixel_sums is not None:
            mean, std = stats_from_sums(added(self.pixel_sums), len(self) * self.size * self.size)
        else:
            mean, std = summed(self)
        if path is not None:
            _keep_in_cache(path, {"mean": mean, "std": std})
        return mean, std

    def unreadable(self) -> dict[int, str]:
        """{position: why} of every file that cannot be read: one decoding pass by the workers, or the
        answer of an earlier pass over the same files (the cache, keyed as the channel statistics)."""
        path = self._cache_path("stream-unreadable")
        saved = _read_unreadable(path, len(self)) if path is not None else None
        if saved is not None and self._still_unreadable(saved):
            return saved
        rows = SCAN_ROWS * max(1, self.workers)
        found, sums = {}, []
        scanned = self._decoded(torch.arange(s, min(s + rows, len(self))) for s in range(0, len(self), rows))
        for number, (images, bad, _) in enumerate(scanned):  # read to its end, so the pool is free again
            found.update({number * rows + i: why for i, why in bad})
            sums.append(pixel_sums(images))
        self.pixel_sums = np.concatenate(sums) if sums else np.zeros((0, 6), dtype=np.int64)
        if path is not None:
            _keep_in_cache(path, {"unreadable": [[i, why] for i, why in sorted(found.items())]})
        return found

    def _still_unreadable(self, saved: dict[int, str]) -> bool:
        """Whether every file of a saved scan still fails: a failure that went away (a file replaced in a
        way that kept its size and time, a permission fixed, a transient I/O error) must not drop a good
        image for ever, so then the caller scans again. Only the listed files are decoded."""
        positions = sorted(saved)
        _, bad = decode_many(self._paths(positions), self.size, self.fit)
        return len(bad) == len(positions)

    def _stats_path(self) -> Optional[Path]:
        return self._cache_path("stream-stats")

    def _cache_path(self, kind: str) -> Optional[Path]:
        """The cache entry `kind` of these files: its name hashes every path, size and modification time
        (or the reader's stamp), the image size, the fit and data.skip_bad_images."""
        if self.stats_cache is None:
            return None
        digest = hashlib.sha256(f"{kind}|{self.size}|{self.skip_bad}|{self.fit}|{self.stamp}".encode())
        for name in self.paths:
            digest.update((file_stamp(name) if self.stamp is None else os.fsencode(name)) + b"\n")
        return Path(self.stats_cache) / f"{kind}-{digest.hexdigest()[:20]}.json"


def _keep_in_cache(path: Path, entry: dict) -> None:
    try:
        write_json(path, entry, 0o600)  # in ccn.data.store.private_cache_dir, read by its owner only
    except (OSError, WriteError) as err:  # a full or read-only cache costs time, not the run
        warnings.warn(f"could not keep {path.name} in the cache {path.parent} ({err})", stacklevel=3)


def _entry_text(path: Path) -> bytes:
    """A cache entry's bytes when it is a private regular file of ours within ENTRY_LIMIT; a FIFO, a
    device, a link, a file of another user or one others may write is named in one warning, not read."""
    try:
        return read_regular_bytes(path, ENTRY_LIMIT, "image cache entry", follow_links=False, private=True)
    except UnsafeFile as err:
        if err.problem != "does not exist":
            warnings.warn(f"{err}: it is not read, and is made afresh", stacklevel=4)
        raise


def _read_unreadable(path: Path, n: int) -> Optional[dict[int, str]]:
    """A saved scan, or None when absent or not a list of [position below n, reason] pairs."""
    try:
        found = {int(i): str(why) for i, why in json.loads(_entry_text(path))["unreadable"]}
    except (OSError, ValueError, KeyError, TypeError, RecursionError, UnsafeFile):
        return None
    return found if all(0 <= i < n for i in found) else None


def _read_stats(path: Path) -> Optional[tuple[list[float], list[float]]]:
    """Saved statistics, or None when absent or not exactly two lists of 3 finite numbers, std positive."""
    try:
        saved = json.loads(_entry_text(path))
        mean, std = saved["mean"], saved["std"]
        numbers = [float(v) for v in mean + std]
    except (OSError, ValueError, KeyError, TypeError, RecursionError, UnsafeFile):
        return None
    if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in numbers) or min(std) <= 0:
        return None
    return [float(v) for v in mean], [float(v) for v in std]


def streamed_splits(train: Sequence[tuple[Path, int]], test: Sequence[tuple[Path, int]], size: int,
                    workers: int, skip_bad: bool, stats_cache: Optional[Path], fit: str = "stretch",
                    stamp: Optional[str] = None, worker_timeout: float = WORKER_TIMEOUT) -> dict:
    """The image and label fields of an ImageDataset whose images are decoded per batch."""
    fields = {}
    for split, items in (("train", train), ("test", test)):
        if not items:
            raise DataError(f"no images in the {split} split: check the data folder")
        source = StreamSource([path for path, _ in items], size, workers, skip_bad, stats_cache, fit, stamp,
                              worker_timeout)
        labels = torch.tensor([label for _, label in items], dtype=torch.long)
        if skip_bad:
            source, labels = _without_unreadable(source, labels, split)
        fields[f"{split}_images"], fields[f"{split}_labels"] = source, labels
    return fields


def _without_unreadable(source: StreamSource, labels: torch.Tensor, split: str) -> tuple[StreamSource, torch.Tensor]:
    """The split without the files that cannot be read, each named in one warning (data.skip_bad_images)."""
    bad = source.unreadable()
    if not bad:
        return source, labels
    for position in sorted(bad):
        warnings.warn(f"skipped: {bad[position]}", stacklevel=4)
    keep = torch.tensor([i for i in range(len(source)) if i not in bad], dtype=torch.long)
    if len(keep) == 0:
        raise DataError(f"none of the {len(source)} images of the {split} split can be read (the first: "
                        f"{source.paths[0]}): replace them with readable images")
    return source.take(keep), labels[keep]
