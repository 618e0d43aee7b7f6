"""Decoded images in a store: in memory, or memory-mapped from a file in the cache.

Memory model. A data set of N images at S x S pixels decodes to N x 3 x S x S bytes (uint8).
    data.store=memory  the decoded images live in the process's memory (anonymous pages); small data
                       sets then go to the training device whole (today's fast path).
    data.store=disk    the decoded images are written image by image to a file in the cache and mapped
                       read-only: they live in the page cache, which the kernel fills and evicts as
                       needed, so the process's own memory does not grow with N. Every torchrun rank
                       maps the same file (rank 0 builds it first).
    data.store=auto    memory when the decoded size is at most half of the memory this process may use
                       (the smallest of the cgroup limit, v1 memory.limit_in_bytes or v2 memory.max, and
                       the machine's MemAvailable), else disk (ours: the other half is left for the model,
                       the batches and the rest of the machine).
    data.store=stream  nothing decoded is kept: the compressed files are decoded per batch in data.workers
                       processes, a few batches ahead (ccn.data.stream; folder, caltech101, imagenet).

A store file is written under a locked temporary name, renamed when complete, and used only when its
sidecar (written last) names the same inputs, its size is exactly N x 3 x S x S and the SHA-256
checksum of its rows and the sidecar's fields (labels included) matches: a store left half-written by
kill -9 or a full disk, or changed since, is rebuilt, and one built from other files or settings is
never reused (the file name is a hash of every path, label, size, modification and change time and
inode, the image size and STORE_VERSION). The cache is private (private_cache_dir): its folder is this
user's and nobody else may write to it, and an entry is read only when it is a regular file of this
user that nobody else may write to (ccn.files.open_regular), never through a link; anything else is
named in one warning and rebuilt. Temporaries whose writer is gone (its lock is free) are removed.

Every source of images the batch iterators read implements `ImageSource`: `gather(indices)` returns
uint8 (n, 3, S, S) CPU images, `batches(index_lists)` those of one index list after another (where a
source can work ahead, as the stream's decoding workers do), `take` (an index view) and `chunks`
(every image in order), plus `__len__` and `shape`. `ImageRows` is the one for decoded images;
ccn.data.stream.StreamSource the one for files decoded per batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from multiprocessing import Pool
from pathlib import Path
from typing import Iterable, Iterator, Optional, Protocol, Sequence

import numpy as np
import torch

from ccn.data import heap
from ccn.data.images import BAD_IMAGE_FIX, UnreadableImage, decode_image
from ccn.data.processes import die_with_parent
from ccn.data.stream import WORKER_TIMEOUT, default_workers, streamed_splits
from ccn.errors import DataError, WriteError
from ccn.files import (UnsafeFile, atomic_write, fault_point, file_stamp, locked_temporary_file, open_regular,
                       read_regular_bytes, remove_abandoned_temporaries, write_json)
from ccn.progress import progress_bar

STORE_VERSION = 4  # 4: the sidecar holds a checksum of data and labels (3: raw uint8 file + JSON sidecar)
AUTO_MEMORY_SHARE = 0.5  # auto keeps data in memory up to this share of the memory the process may use (ours)
UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a huge number near 2**63
DECODE_CHUNK = 32  # images per task handed to a decoding worker
PARALLEL_FROM = 256  # fewer images are decoded in the parent: starting workers costs more
IN_FLIGHT = 2  # chunks per worker decoded ahead of the writer: bounds the memory decoding takes
ENTRY_MODE = 0o600  # cache entries: read and written by their owner only
SIDECAR_LIMIT = 256 * 2**20  # bytes; a sidecar of 10 million labels stays far below this
SYNC_BYTES = 64 * 2**20  # a store being written is flushed to disk after each of these (dirty pages count
#                         against a cgroup's memory limit until written, and cgroup v1 does not throttle them)
HASH_CHUNK = 16 * 2**20  # bytes per piece of a store's checksum; the pieces are hashed in parallel


class ImageSource(Protocol):
    """What the batch iterators need from a store (the seam a streaming store implements)."""

    shape: tuple

    def __len__(self) -> int: ...

    def gather(self, indices: torch.Tensor) -> torch.Tensor: ...

    def batches(self, index_lists: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]: ...

    def take(self, indices: torch.Tensor) -> "ImageSource": ...  # an index view: the validation split, hold-outs, caps

    def chunks(self, rows: int) -> Iterator[torch.Tensor]: ...  # every image in order, for the channel statistics


class ImageRows:
    """uint8 (N, 3, S, S) images: a CPU tensor (in memory, or mapped from a store file) seen through an
    optional index. `take` makes a view (the validation split, hold-out and caps copy no pixels);
    `gather` and indexing copy out only the rows asked for."""

    def __init__(self, base: torch.Tensor, index: Optional[torch.Tensor] = None, kind: str = "memory"):
        self.base, self.index, self.kind = base, index, kind
        self.dtype, self.ndim = base.dtype, base.ndim

    @property
    def shape(self) -> tuple:
        return (len(self), *self.base.shape[1:])

    @property
    def nbytes(self) -> int:
        return len(self) * int(np.prod(self.base.shape[1:]))

    def __len__(self) -> int:
        return len(self.base) if self.index is None else len(self.index)

    def _rows(self, indices: torch.Tensor) -> torch.Tensor:
        return indices if self.index is None else self.index[indices]

    def take(self, indices: torch.Tensor) -> "ImageRows":
        return ImageRows(self.base, self._rows(torch.as_tensor(indices, dtype=torch.long)), self.kind)

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        return self.base[self._rows(torch.as_tensor(indices, dtype=torch.long))]

    def batches(self, index_lists: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        return (self.gather(indices) for indices in index_lists)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, int):
            return self.gather(torch.tensor([key]))[0]
        if isinstance(key, slice):
            return self.gather(torch.arange(len(self))[key])
        return self.gather(key)

    def chunks(self, rows: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), rows):
            yield self.gather(torch.arange(start, min(start + rows, len(self))))


def select(images, indices: torch.Tensor):
    """Rows `indices` of a tensor (a copy, as before) or of an ImageSource (a view: no pixels copied)."""
    return images[indices] if isinstance(images, torch.Tensor) else images.take(indices)


# ---------------------------------------------------------------- which store


def memory_limits() -> list[tuple[int, str]]:
    """(bytes, where from) for every limit on this process's memory that the machine states."""
    found = []
    for line in _read("/proc/self/cgroup").splitlines():
        _, controllers, group = (line.split(":", 2) + ["", ""])[:3]
        if "memory" in controllers.split(","):
            candidates = [(f"/sys/fs/cgroup/memory{group}/memory.limit_in_bytes", "cgroup memory.limit_in_bytes")]
        elif controllers == "":
            candidates = [(f"{mount}{group}/memory.max", "cgroup memory.max")
                          for mount in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")]
        else:
            continue
        for path, name in candidates:
            text = _read(path).strip()
            if text.isdigit() and int(text) < UNLIMITED:
                found.append((int(text), name))
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemAvailable:"):
            found.append((int(line.split()[1]) * 1024, "MemAvailable"))
    return found


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, ValueError):
        return ""


def choose_store(requested: str, decoded_bytes: int) -> tuple[str, str]:
    """(memory, disk or stream, why) for data.store=`requested` and data of `decoded_bytes`."""
    size = f"{decoded_bytes / 1e9:.2f} GB decoded"
    if requested != "auto":
        return requested, f"data.store={requested} ({size})"
    limits = memory_limits()
    if not limits:
        return "memory", f"auto: {size}, and this machine states no memory limit"
    allowed, source = min(limits)
    copies = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))  # torchrun: each rank on this machine holds one
    if copies > 1:
        allowed, source = allowed // copies, f"{source}, shared by {copies} processes on this machine"
    share = f"{AUTO_MEMORY_SHARE:.0%} of the {allowed / 2**30:.2f} GiB this process may use ({source})"
    if decoded_bytes <= AUTO_MEMORY_SHARE * allowed:
        return "memory", f"auto: {size} fits in {share}"
    return "disk", f"auto: {size} is more than {share}"


# ---------------------------------------------------------------- decoding


_worker_items: Sequence = ()


def _start_worker(parent: int, items: Sequence, size: int, skip_bad: bool, fit: str) -> None:
    global _worker_items, _worker_settings
    die_with_parent(parent)
    _worker_items, _worker_settings = items, (size, skip_bad, fit)


_worker_settings = (0, False, "stretch")


def _decode_or_reason(path: Path, size: int, skip_bad: bool, fit: str = "stretch") -> np.ndarray | str:
    """The decoded image, or (with data.skip_bad_images) why it cannot be read."""
    try:
        return decode_image(path, size, fit)
    except UnreadableImage as err:
        if skip_bad:
            return str(err)
        raise DataError(f"{err}: {BAD_IMAGE_FIX}") from None


def _decode_range(bounds: tuple[int, int]) -> list:
    size, skip_bad, fit = _worker_settings
    return [_decode_or_reason(path, size, skip_bad, fit) for path, _ in _worker_items[bounds[0]:bounds[1]]]


def decoded_images(items: Sequence[tuple[Path | str, int]], size: int, skip_bad: bool,
                   fit: str = "stretch") -> Iterator[np.ndarray | str]:
    """Each item's (size, size, 3) image (or, with skip_bad, why it was skipped), in order, decoded by
    worker processes that end with this one. Nothing is kept: the caller writes each image away.
    `fit`: how a photo becomes a square (ccn.data.images.decode_image)."""
    workers = min(os.cpu_count() or 1, 8)
    shown = dict(total=len(items), desc=f"decoding {len(items)} images", unit="img")
    if len(items) <= PARALLEL_FROM or workers < 2:
        yield from progress_bar((_decode_or_reason(path, size, skip_bad, fit) for path, _ in items), **shown)
        return
    ranges = iter([(start, min(start + DECODE_CHUNK, len(items))) for start in range(0, len(items), DECODE_CHUNK)])
    with Pool(workers, initializer=_start_worker, initargs=(os.getpid(), items, size, skip_bad, fit)) as pool, \
            progress_bar(**shown) as bar:
        # at most IN_FLIGHT chunks per worker are decoded ahead of the writer (Pool.imap has no such
        # bound: with a slow disk the decoded images would pile up in this process's memory)
        pending = deque(pool.apply_async(_decode_range, (r,)) for r in islice(ranges, IN_FLIGHT * workers))
        done = 0
        while pending:
            chunk = pending.popleft().get()
            pending.extend(pool.apply_async(_decode_range, (r,)) for r in islice(ranges, 1))
            count = len(chunk)
            yield from chunk
            del chunk
            bar.update(count)
            done += 1
            if done % heap.TRIM_EVERY == 0:  # the freed chunks back to the system (ccn.data.heap)
                heap.trim()
            if done == 2:
                fault_point("store-mid-decode")
    heap.trim()


def write_images(items: Sequence[tuple[Path | str, int]], size: int, skip_bad: bool, put,
                 fit: str = "stretch") -> list[int]:
    """Decode `items`, calling put(row, (3, S, S) array) for each readable image; its labels."""
    labels = []
    for result, (path, label) in zip(decoded_images(items, size, skip_bad, fit), items):
        if isinstance(result, str):
            warnings.warn(f"skipped: {result}", stacklevel=3)
            continue
        put(len(labels), result.transpose(2, 0, 1))
        labels.append(label)
    if not labels:
        raise DataError("no readable images in this split: check the data folder")
    return labels


def decode_split(items: Sequence[tuple[Path | str, int]], size: int, skip_bad: bool,
                 fit: str = "stretch") -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 (N, 3, S, S), labels) in memory, each image written into one preallocated array."""
    out = np.empty((len(items), 3, size, size), dtype=np.uint8)
    labels = write_images(items, size, skip_bad, out.__setitem__, fit)
    return torch.from_numpy(out[:len(labels)]), torch.tensor(labels, dtype=torch.long)


# ---------------------------------------------------------------- store files


def cache_dir() -> Path:
    """CCN_CACHE_DIR as given (empty means unset), else ~/.cache/ccn; private_cache_dir is what is used."""
    given = os.environ.get("CCN_CACHE_DIR", "")
    return Path(given) if given else Path.home() / ".cache" / "ccn"


_said: set = set()  # the cache folders already named in a warning by this process


def private_cache_dir() -> Path:
    """The folder ccn reads its cache from and writes it to: cache_dir() when it is a folder of this
    user that nobody else may write to (the default is created 0700), else its sub-folder
    `ccn-<uid>`, created 0700 and said in one warning: a cache another user can write to could hold
    entries of theirs (decoded images with labels of their choosing). Temporaries of earlier
    writers that are gone are removed here, whatever killed them."""
    folder = cache_dir()
    if os.path.islink(folder) and os.lstat(folder).st_uid != os.geteuid():
        # another user's link decides where this user's cache (and its clean-up) would go
        raise WriteError(f"the image cache folder {folder} is a symbolic link of another user (uid "
                         f"{os.lstat(folder).st_uid}): ccn follows no one else's link; set CCN_CACHE_DIR to a "
                         "folder of your own")
    make_cache_dir(folder)
    default = not os.environ.get("CCN_CACHE_DIR")
    problem = _not_private(folder, fix_default=default)
    if problem:
        shared, folder = folder, folder / f"ccn-{os.geteuid()}"
        make_cache_dir(folder)
        mine = _not_private(folder, fix_default=False, follow=False)
        if mine:
            raise WriteError(f"the image cache folder {folder} {mine}: ccn reads nothing another user could "
                             "have written; remove it, or set CCN_CACHE_DIR to a folder of your own")
        if str(shared) not in _said:
            _said.add(str(shared))
            warnings.warn(f"the image cache folder {shared} {problem}: ccn keeps its cache in its private "
                          f"sub-folder {folder}", stacklevel=3)
    remove_abandoned_temporaries(folder)
    return folder


def _not_private(folder: Path, fix_default: bool, follow: bool = True) -> Optional[str]:
    """Why `folder` is not a private cache folder of this user, or None. The default folder, when it
    is ours, is made 0700 (older versions left it readable by all)."""
    info = os.stat(folder) if follow else os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        return "is a symbolic link, not a folder"
    if info.st_uid != os.geteuid():
        return f"is owned by another user (uid {info.st_uid})"
    if fix_default and info.st_mode & 0o077:
        try:
            os.chmod(folder, 0o700)
            return None
        except OSError:
            pass  # a read-only file system: used as it is when nobody else may write to it
    if info.st_mode & 0o022:
        return "is writable by other users"
    return None


def make_cache_dir(folder: Path) -> None:
    """The cache folder a disk store is written to, created (0700); one line naming CCN_CACHE_DIR when it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not folder.is_dir():
            raise NotADirectoryError(20, "Not a directory")
    except OSError as err:  # a file in its place (FileExistsError, NotADirectoryError), no permission
        raise WriteError(f"cannot create the image cache folder {folder} ({err.strerror or err}): a disk store is "
                         "written there; set CCN_CACHE_DIR to a writable folder (default ~/.cache/ccn)") from None


def cache_key(kind: str, items: Sequence[tuple[Path | str, int]], size: int, extra: str = "",
              stamp: Optional[str] = None) -> str:
    """A hash of everything the decoded images depend on: any change gives another store. Each file's
    file_stamp is in it; or, when the reader gives a `stamp` (ImageNet: its folders' modification
    times), that instead of a stat per file, which costs minutes for a million files on a network disk."""
    digest = hashlib.sha256(f"{kind}|{size}|{STORE_VERSION}|{extra}".encode())
    if stamp is not None:
        digest.update(f"stamp|{stamp}\n".encode())
    for path, label in items:
        name = file_stamp(path) if stamp is None else os.fsencode(str(path))
        digest.update(name + f"|{label}\n".encode())
    return digest.hexdigest()[:20]


class StoreDigest:
    """The checksum of a store: SHA-256 of each HASH_CHUNK bytes of its data (pieces hashed in parallel
    threads when checked; SHA-256 has hardware support on current x86 and ARM CPUs), then of those
    digests with the sidecar's fields (labels included). Fed as the rows are written, so a new store
    costs no second pass."""

    def __init__(self):
        self.pieces: list[bytes] = []
        self.current, self.filled = hashlib.sha256(), 0

    def update(self, data) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), HASH_CHUNK - self.filled)
            self.current.update(view[:take])
            self.filled, view = self.filled + take, view[take:]
            if self.filled == HASH_CHUNK:
                self.pieces.append(self.current.digest())
                self.current, self.filled = hashlib.sha256(), 0

    def hexdigest(self, meta: dict) -> str:
        pieces = self.pieces + ([self.current.digest()] if self.filled else [])
        return _checksum(pieces, meta)

    @staticmethod
    def of(data: np.ndarray, meta: dict) -> str:
        """The checksum of a whole store held in `data` (memory, or a map of the file)."""
        view = memoryview(data.reshape(-1))
        starts = range(0, len(view), HASH_CHUNK)
        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:  # hashlib releases the GIL
            pieces = list(pool.map(lambda start: hashlib.sha256(view[start:start + HASH_CHUNK]).digest(), starts))
        return _checksum(pieces, meta)


def _checksum(pieces: list[bytes], meta: dict) -> str:
    fields = json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True).encode()
    return hashlib.sha256(b"".join(pieces) + b"|" + fields).hexdigest()


@dataclass
class StoreFile:
    """A decoded split on disk: `data` (raw uint8 rows) and `sidecar` (JSON: what, how many, labels)."""

    data: Path
    sidecar: Path
    key: str
    size: int

    @classmethod
    def for_split(cls, kind: str, items, size: int, options: "StoreOptions") -> "StoreFile":
        extra = str(options.skip_bad) + ("" if options.fit == "stretch" else f"|{options.fit}")
        key = cache_key(kind, items, size, extra, options.stamp)
        base = private_cache_dir() / f"{kind}-{key}"
        return cls(base.with_suffix(".u8"), base.with_suffix(".json"), key, size)

    def row_bytes(self) -> int:
        return 3 * self.size * self.size

    def read_sidecar(self) -> Optional[dict]:
        """The sidecar when it is a private regular file of ours describing one complete store of this
        key, else None (a refused file is named in one warning: it is rebuilt)."""
        try:
            meta = json.loads(self._entry_bytes(self.sidecar, SIDECAR_LIMIT, "sidecar"))
            n, labels = int(meta["images"]), meta["labels"]
            complete = (meta.get("format") == "ccn-store" and meta.get("version") == STORE_VERSION
                        and meta.get("key") == self.key and meta.get("image_size") == self.size
                        and isinstance(labels, list) and len(labels) == n > 0
                        and all(type(v) is int for v in labels) and isinstance(meta.get("checksum"), str))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None
        except _Absent:
            return None
        return meta if complete else None

    def _entry_bytes(self, path: Path, limit: int, what: str) -> bytes:
        try:
            return read_regular_bytes(path, limit, f"image cache {what}", follow_links=False, private=True)
        except UnsafeFile as err:
            _refused(err)
            raise _Absent() from None

    def discard(self) -> None:
        for path in (self.sidecar, self.data):  # the sidecar first: without it the data is never used
            try:
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
            except OSError:
                pass  # a folder that is not empty: writing there then fails in one line

    def write(self, items, options: "StoreOptions") -> tuple[dict, np.ndarray]:
        """Decode `items` straight into the data file (under a locked temporary name, space reserved
        first), rename it, then write the sidecar: only a complete store ever has one. Returns the
        sidecar and the store mapped."""
        self.discard()
        holder = {}

        def write_rows(tmp: Path) -> None:
            holder["meta"] = self._write_rows(tmp, items, options)
            fault_point("store-before-rename")

        try:
            atomic_write(self.data, write_rows, ENTRY_MODE)
        except WriteError as err:
            raise WriteError(f"{err}; or point CCN_CACHE_DIR at a disk with room for the decoded images") from None
        fault_point("store-before-sidecar")
        write_json(self.sidecar, holder["meta"], ENTRY_MODE)
        with open_regular(self.data, UNLIMITED, "image cache store", follow_links=False) as handle:
            return holder["meta"], _mapped(handle, self._shape(holder["meta"]), "disk")

    def _write_rows(self, path: Path, items, options: "StoreOptions") -> dict:
        """Decode `items` into the file at `path` row by row (its space reserved first); the sidecar's fields."""
        digest = StoreDigest()
        with open(path, "r+b") as handle:
            _reserve(handle, len(items) * self.row_bytes())

            def put(row, image):
                data = np.ascontiguousarray(image)
                digest.update(data)
                handle.write(data)
                if (row + 1) % max(1, SYNC_BYTES // data.nbytes) == 0:
                    os.fdatasync(handle.fileno())  # a cgroup's memory holds at most SYNC_BYTES of unwritten pages
            labels = write_images(items, self.size, options.skip_bad, put, options.fit)
            handle.truncate(len(labels) * self.row_bytes())  # rows of skipped images
        fault_point("store-rows-written")
        return self.sidecar_fields(labels, len(items) - len(labels), digest)

    def sidecar_fields(self, labels: list[int], skipped: int, digest: StoreDigest | np.ndarray) -> dict:
        meta = {"format": "ccn-store", "version": STORE_VERSION, "key": self.key, "image_size": self.size,
                "images": len(labels), "skipped": skipped, "labels": labels}
        meta["checksum"] = digest.hexdigest(meta) if isinstance(digest, StoreDigest) else StoreDigest.of(digest, meta)
        return meta

    def _shape(self, meta: dict) -> tuple:
        return (int(meta["images"]), 3, self.size, self.size)

    def open(self, meta: dict, kind: str) -> Optional[tuple[ImageRows, torch.Tensor]]:
        """The store's images and labels, or None (said in one warning) when its data file is not a
        private regular file of ours of the right size, or does not match the sidecar's checksum.
        The file checked is the file used: one descriptor, opened once."""
        shape = self._shape(meta)
        try:
            handle = open_regular(self.data, int(np.prod(shape)), "image cache store", follow_links=False,
                                  private=True)
        except UnsafeFile as err:
            _refused(err)
            return None
        with handle:
            if os.fstat(handle.fileno()).st_size != int(np.prod(shape)):
                return None  # cut short: a crash or a full disk
            array = _mapped(handle, shape, kind)
        if StoreDigest.of(array, meta) != meta["checksum"]:
            warnings.warn(f"the image cache store {self.data} does not match the checksum in its sidecar (its images "
                          "or labels were changed): it is rebuilt", stacklevel=4)
            return None
        return ImageRows(torch.from_numpy(array), kind=kind), torch.tensor(meta["labels"], dtype=torch.long)


class _Absent(Exception):
    """A cache entry that is missing or refused: the store is built afresh."""


def _refused(err: UnsafeFile) -> None:
    """One warning for a cache entry that exists but is not read; a missing one is silently built."""
    if err.problem != "does not exist":
        warnings.warn(f"{err}: it is not read, and is rebuilt", stacklevel=5)


def _mapped(handle, shape: tuple, kind: str) -> np.ndarray:
    """The store file open in `handle`, in memory (read in fixed chunks into one array) or mapped."""
    if kind != "memory":  # copy-on-write map: pages stay the file's, and nothing can write to the store
        return np.memmap(handle, dtype=np.uint8, mode="c", shape=shape)
    array = np.empty(shape, dtype=np.uint8)
    view, done = memoryview(array.reshape(-1)), 0
    while done < len(view):
        got = handle.readinto(view[done:done + HASH_CHUNK])
        if not got:
            raise DataError(f"{handle.name} ended early while read: rerun (it is rebuilt)")
        done += got
    return array


def _reserve(handle, nbytes: int) -> None:
    """Claim the disk space now, so a full disk stops the build at once instead of after decoding."""
    if nbytes and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(handle.fileno(), 0, nbytes)
        except OSError as err:
            if err.errno not in (95, 22):  # EOPNOTSUPP, EINVAL: a file system without it; writes still check
                raise


def stored_split(kind: str, items, size: int, options: "StoreOptions", store: str) -> tuple[ImageRows, torch.Tensor]:
    """One split's decoded images in `store` (memory or disk), from the cache when it holds them."""
    if not options.cache:
        if store == "memory":
            images, labels = decode_split(items, size, options.skip_bad, options.fit)
            return ImageRows(images, kind="memory"), labels
        return _unnamed_disk_split(kind, items, size, options)
    file = StoreFile.for_split(kind, items, size, options)
    meta = file.read_sidecar()
    found = file.open(meta, store) if meta is not None else None
    if found is not None:
        return found
    if store == "memory":  # decode in memory; a cache that cannot be written costs time, not the run
        images, labels = decode_split(items, size, options.skip_bad, options.fit)
        _try_to_cache(file, images, labels)
        return ImageRows(images, kind="memory"), labels
    meta, array = file.write(items, options)
    return ImageRows(torch.from_numpy(array), kind="disk"), torch.tensor(meta["labels"], dtype=torch.long)


def _try_to_cache(file: StoreFile, images: torch.Tensor, labels: torch.Tensor) -> None:
    try:
        file.discard()
        atomic_write(file.data, lambda tmp: images.numpy().tofile(tmp), ENTRY_MODE)
        write_json(file.sidecar, file.sidecar_fields(labels.tolist(), 0, images.numpy()), ENTRY_MODE)
    except (OSError, WriteError) as err:
        file.discard()
        warnings.warn(f"could not write the image cache at {file.data.parent} ({err}); set CCN_CACHE_DIR to a "
                      "writable folder", stacklevel=3)


def _unnamed_disk_split(kind: str, items, size: int, options: "StoreOptions") -> tuple[ImageRows, torch.Tensor]:
    """data.cache=false with a disk store: a locked temporary file in the cache folder, mapped, then
    removed (the map keeps it). One left by a killed run is removed by the next (its lock is gone)."""
    file = StoreFile.for_split(f"unnamed-{kind}", items, size, options)
    tmp, lock = locked_temporary_file(file.data, ENTRY_MODE)
    try:
        meta = file._write_rows(tmp, items, options)
        with open_regular(tmp, UNLIMITED, "image cache store", follow_links=False) as handle:
            array = _mapped(handle, file._shape(meta), "disk")
        return ImageRows(torch.from_numpy(array), kind="disk"), torch.tensor(meta["labels"], dtype=torch.long)
    except OSError as err:
        raise WriteError(f"could not write {tmp} ({err.strerror or err}): free disk space, or point CCN_CACHE_DIR "
                         "at a disk with room for the decoded images") from None
    finally:
        tmp.unlink(missing_ok=True)
        os.close(lock)


# ---------------------------------------------------------------- the stored data set


@dataclass
class StoreOptions:
    store: str = "auto"  # data.store
    cache: bool = True  # data.cache
    skip_bad: bool = False  # data.skip_bad_images
    fit: str = "stretch"  # how a photo becomes a square: the reader's choice (ccn.data.images.decode_image)
    stamp: Optional[str] = None  # the reader's stand-in for a stat per file in the key (see cache_key)
    workers: Optional[int] = None  # data.workers (stream only; None: min(8, CPUs))
    worker_timeout: float = WORKER_TIMEOUT  # data.worker_timeout (stream only)

    @classmethod
    def from_config(cls, cfg) -> "StoreOptions":
        return cls(store=cfg.store, cache=cfg.cache, skip_bad=cfg.skip_bad_images, workers=cfg.workers,
                   worker_timeout=cfg.worker_timeout)


def stored_splits(kind: str, train: Sequence[tuple[Path, int]], test: Sequence[tuple[Path, int]], size: int,
                  options: StoreOptions) -> dict:
    """The fields of an ImageDataset for (path, label) listings decoded at `size` x `size`: train and
    test images in the store data.store picks (memory, disk or stream), labels, and notes["store"]
    saying which store and why. Every reader of image files (folder, Caltech-101, ImageNet) goes through here."""
    store, why = choose_store(options.store, (len(train) + len(test)) * 3 * size * size)
    if store == "stream":
        workers = default_workers(options.workers)
        fields = streamed_splits(train, test, size, workers, options.skip_bad,
                                 private_cache_dir() if options.cache else None,
                                 options.fit, options.stamp, options.worker_timeout)
        check_every_class_readable(train, fields["train_labels"])
        where = f"{workers} worker process(es)" if workers else "the training process (data.workers=0)"
        return {**fields, "notes": {"store": f"stream: {why}, decoded per batch in {where}"}}
    x_train, y_train = stored_split(kind, train, size, options, store)
    check_every_class_readable(train, y_train)
    x_test, y_test = stored_split(kind, test, size, options, store)
    return dict(train_images=x_train, train_labels=y_train, test_images=x_test, test_labels=y_test,
                notes={"store": f"{store}: {why}"})


def check_every_class_readable(items: Sequence[tuple[Path | str, int]], kept_labels: torch.Tensor) -> None:
    """One line naming a class whose every training image was skipped as unreadable (data.skip_bad_images):
    a run would train without it (flat) or stop at its first probe with a misleading message (ccn)."""
    kept = set(kept_labels.unique().tolist())
    lost: dict[int, list] = {}
    for path, label in items:
        if label not in kept:
            lost.setdefault(label, []).append(path)
    if lost:
        paths = lost[min(lost)]
        more = f" (and {len(lost) - 1} other class(es))" if len(lost) > 1 else ""
        raise DataError(f"class folder {Path(paths[0]).parent} holds no readable training images{more}: all "
                        f"{len(paths)} were skipped as unreadable (the first: {paths[0]}); replace them "
                        "with readable images, or remove the class")
