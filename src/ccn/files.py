"""Writing files safely: every file ccn writes goes through atomic_write, so a crash, a full disk or a
read-only folder leaves the previous file intact and is reported in one line. The bottom layer:
it needs only ccn.errors, so any module can write a file without importing torch or safetensors."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import stat
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Optional

from ccn.errors import CCNError, WriteError

try:
    import fcntl
except ImportError:  # Windows: no flock; abandoned temporaries are then left alone
    fcntl = None


def atomic_write(path: Path, write, mode: Optional[int] = None) -> None:
    """Call write(tmp_path), fsync it, then rename over `path`: a crash leaves the old file intact.

    The temporary file is created afresh beside `path` under an unpredictable name (O_EXCL |
    O_NOFOLLOW, as tempfile.mkstemp does), so a link planted where ccn writes is never written
    through, and it is locked (flock) until renamed: a later process removes it as abandoned only
    when it can take that lock (remove_abandoned_temporaries), whatever killed its writer and in
    whatever PID namespace or host it ran. `mode`: its permissions (default: a plain new file's).
    A failed write (full disk, read-only folder, no permission) is a WriteError, one line."""
    path = Path(path)
    tmp, lock = None, None
    try:
        tmp, lock = locked_temporary_file(path, mode)
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise WriteError(f"could not write {path} ({err.strerror or err}): {_write_fix(path)}") from None
    finally:
        if tmp is not None:
            _discard(tmp)
        if lock is not None:
            os.close(lock)


def check_replaceable(path: Path, what: str, fix: str) -> None:
    """CCNError unless `path` is absent or a regular file: atomic_write renames over whatever is there,
    so a FIFO, a device (as root, --out /dev/null would become a regular file), a socket or a link
    there would be replaced by a file. Looked at without following a link (the link is what is replaced)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as err:
        raise CCNError(f"{what} {path} cannot be looked at ({err.strerror or err}): {fix}") from None
    problem = node_problem(mode)
    if problem:
        raise CCNError(f"{what} {path} {problem}, and ccn replaces only regular files: {fix}")


def new_temporary_file(path: Path, mode: Optional[int] = None) -> Path:
    """An empty file of ours beside `path`, named `.NAME.<pid>.<random>.tmp` (run folders clean up
    `.NAME.*.tmp`), with the permissions a plain new file gets (mkstemp's own are owner-only) or
    `mode`. The random part makes the name unpredictable. Unlocked: see locked_temporary_file."""
    tmp, fd = _temporary(path, mode)
    os.close(fd)
    return tmp


def locked_temporary_file(path: Path, mode: Optional[int] = None) -> tuple[Path, int]:
    """(new_temporary_file's file, an open descriptor holding an exclusive flock on it). The writer
    keeps the descriptor open while it writes: the kernel drops the lock when it exits, even by
    SIGKILL, which is how remove_abandoned_temporaries tells a live writer from a dead one."""
    while True:
        tmp, fd = _temporary(path, mode)
        locked = _try_lock(fd)
        if locked is None or (locked and _same_file(fd, tmp)):  # None: no locks here (see _try_lock)
            return tmp, fd
        os.close(fd)  # a cleaner took and removed it between its creation and our lock: make another


# the name _temporary gives: `.NAME.<pid>.<mkstemp's random characters>.tmp`; nothing else is ever
# removed as a temporary (a user's own `.notes.tmp` in a folder they named as the cache is left alone)
TEMPORARY_NAME = re.compile(r"\..+\.\d+\.[a-z0-9_]+\.tmp")


def remove_abandoned_temporaries(folder: Path, pattern: str = ".*.tmp") -> list[Path]:
    """Remove the temporary files (`pattern`, and named as _temporary names them) in `folder` that are
    ours (a regular file of this user) and whose writer is gone: nobody holds their lock (see
    locked_temporary_file). A writer's pid is not used: it means nothing in another PID namespace (a
    container) or on another host sharing the folder. Returns what was removed."""
    removed = []
    if fcntl is None:
        return removed  # no flock: a live writer cannot be told from a dead one
    for tmp in Path(folder).glob(pattern):
        if not TEMPORARY_NAME.fullmatch(tmp.name):
            continue
        try:
            fd = os.open(tmp, _READ_FLAGS | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue  # a link, gone meanwhile, or not ours to read
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and _try_lock(fd) is True \
                    and _same_file(fd, tmp):
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _temporary(path: Path, mode: Optional[int]) -> tuple[Path, int]:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, (0o666 & ~_umask()) if mode is None else mode)
    except OSError:
        os.close(fd)
        raise
    return Path(name), fd


def try_lock(fd: int) -> Optional[bool]:
    """An exclusive flock on `fd`, taken without waiting. True: locked; False: another process holds it;
    None: this system has no flock (Windows). A file system without locks (ENOLCK, EOPNOTSUPP: some
    network file systems) raises its OSError: the caller decides what that means (ccn.locks.FolderLock)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _try_lock(fd: int) -> Optional[bool]:
    """try_lock, with None also where this file system has no locks: its temporaries are then never
    judged abandoned."""
    try:
        return try_lock(fd)
    except OSError:
        return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.lstat(path).st_ino
    except OSError:
        return False


@lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it; set back at once
    os.umask(mask)
    return mask


def _write_fix(path: Path) -> str:
    if not path.parent.is_dir():
        return f"the folder {path.parent} does not exist: create it or choose another path"
    return "free disk space or make the folder writable; the previous file, if any, is unchanged"


def open_for_append(path: Path):
    """open(path, "a"), except that a symbolic link planted at `path` is refused (ELOOP), not followed, and
    a FIFO with no reader there fails at once (ENXIO) instead of blocking the open."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0), 0o666)
    return os.fdopen(fd, "a")


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only folder, where nothing was written either


def fault_point(name: str) -> None:
    """Testing hook: the process kills itself with SIGKILL when CCN_FAULT names this point.

    The resume tests use it to stop a run at exact places (mid-epoch, inside a save, right after
    clustering); it does nothing unless that variable is set."""
    if os.environ.get("CCN_FAULT") == name:
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- reading only what can be read


class UnsafeFile(CCNError):
    """A file ccn will not read: missing, not a regular file (a FIFO would block, a device never ends),
    larger than its limit, or (private=True) not ccn's own. `problem` says which, without the path."""

    def __init__(self, message: str, problem: str):
        super().__init__(message)
        self.problem = problem


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def node_kind(mode: int) -> str:
    """What a file-system node is, in the words an error line uses ("a FIFO", "a folder" ...)."""
    for test, words in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return words
    return "not a regular file"


def node_problem(mode: int) -> str:
    """"is a FIFO, not a regular file" (or a folder, device, socket, link); "" for a regular file."""
    if stat.S_ISREG(mode):
        return ""
    kind = node_kind(mode)
    return f"is {kind}" if kind in ("a folder", "a symbolic link") else f"is {kind}, not a regular file"


def open_regular(path, limit: Optional[int], what: str, fix: str = "", *, follow_links: bool = True,
                 private: bool = False, error: Optional[type] = None) -> BinaryIO:
    """`path` opened for reading ("rb"), or one line "<what> <path> <problem>[: <fix>]" (UnsafeFile,
    or `error` when given, such as DataError).

    Only a regular file of at most `limit` bytes (None: any size, for files that are mapped rather
    than read) is opened: it is stat'ed first, so a FIFO or device is never opened at all (opening one
    can block or act), then opened with O_NONBLOCK (a FIFO swapped in meanwhile cannot block the open)
    and checked again through the open descriptor, which is what is then read (no race between the
    check and the read). follow_links=False refuses a symbolic link at `path` (O_NOFOLLOW): for files
    only ccn writes, such as cache entries. private=True also refuses a file owned by another user or
    writable by group or others: one whose content someone else could have chosen. The caller reads at
    most `limit` bytes (read_regular_bytes does)."""
    path = Path(path)

    def refuse(problem: str) -> CCNError:
        return _refusal(path, what, fix, error, problem)

    flags = _READ_FLAGS | (getattr(os, "O_NOFOLLOW", 0) if not follow_links else 0)
    try:
        problem = _not_readable(os.stat(path) if follow_links else os.lstat(path), limit, what, private)
        if problem:
            raise refuse(problem)
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        raise refuse("does not exist") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise refuse("is a symbolic link") from None
        raise refuse(f"cannot be read ({err.strerror or err})") from None
    problem = _not_readable(os.fstat(fd), limit, what, private)
    if problem:  # replaced between the stat and the open
        os.close(fd)
        raise refuse(problem)
    return io.BufferedReader(_NonWaitingFile(fd, lambda: refuse(WOULD_WAIT)))


# what open_regular's file says of a file the kernel calls regular but whose read would wait for data
# (/proc/kmsg, a tracing pipe): it is not a file of data, and O_NONBLOCK turns the wait into this line
WOULD_WAIT = "cannot be read without waiting (it is not a file of data)"


class _NonWaitingFile(io.FileIO):
    """The raw file under open_regular's reader: a read that would wait (EAGAIN under O_NONBLOCK, which
    FileIO reports as None and a buffered reader passes on as None or a short read) raises the refusal
    instead, so every reader of the handle (a loop of read(n), readinto, numpy) gets one line, never a
    None it cannot use."""

    def __init__(self, fd: int, refusal):
        super().__init__(fd, "rb")
        self._refusal = refusal

    def readinto(self, buffer) -> int:
        got = super().readinto(buffer)
        if got is None:
            raise self._refusal()
        return got

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        data = super().read(size)
        if data is None:
            raise self._refusal()
        return data

    def readall(self) -> bytes:
        """FileIO's own readall stops at a would-wait read and returns what it had: read in blocks instead."""
        chunks = []
        while True:
            block = self.read(1 << 20)
            if not block:
                return b"".join(chunks)
            chunks.append(block)


def regular_file_size(path, what: str, fix: str = "", limit: Optional[int] = None,
                      error: Optional[type] = None) -> int:
    """The size of `path` once it is known to be a regular file of at most `limit` bytes (see
    open_regular): for readers that open the file themselves (safetensors, numpy's memory map)."""
    with open_regular(path, limit, what, fix, error=error) as handle:
        return os.fstat(handle.fileno()).st_size


def read_regular_bytes(path, limit: int, what: str, fix: str = "", *, follow_links: bool = True,
                       private: bool = False, error: Optional[type] = None) -> bytes:
    """The bytes of `path`, opened as open_regular does; never more than `limit` (a file that grows
    while read, or whose file system reports no size, is refused, not followed to its end)."""
    def refuse(problem: str) -> CCNError:
        return _refusal(path, what, fix, error, problem)

    with open_regular(path, limit, what, fix, follow_links=follow_links, private=private, error=error) as handle:
        try:
            data = handle.read(limit + 1)  # a read that would wait is refused by the handle (_NonWaitingFile)
        except OSError as err:
            raise refuse(f"cannot be read ({err.strerror or err})") from None
    if len(data) > limit:
        raise refuse(f"is larger than its size said (it grows, or never ends), more than the {limit} bytes a "
                     f"{what} may have")
    return data


def _refusal(path, what: str, fix: str, error: Optional[type], problem: str) -> CCNError:
    """The one line "<what> <path> <problem>[: <fix>]", as `error` (such as DataError) or UnsafeFile."""
    message = f"{what} {path} {problem}" + (f": {fix}" if fix else "")
    return error(message) if error is not None else UnsafeFile(message, problem)


def _not_readable(info: os.stat_result, limit: Optional[int], what: str, private: bool) -> Optional[str]:
    """Why a file of this stat is not read, or None."""
    problem = node_problem(info.st_mode)
    if problem:
        return problem
    if private and info.st_uid != os.geteuid():
        return f"is owned by another user (uid {info.st_uid})"
    if private and info.st_mode & 0o022:
        return "is writable by other users"
    if limit is not None and info.st_size > limit:
        return f"is {info.st_size} bytes, more than the {limit} bytes a {what} may have"
    return None


def file_stamp(path) -> bytes:
    """What a cache key records of one file: its name (as bytes: names need not be UTF-8), size,
    modification and change times and inode. The change time and inode move when the content is
    replaced even with the size and modification time kept (`touch -r`, a tar with 1-second times)."""
    info = os.stat(path)
    return os.fsencode(str(path)) + f"|{info.st_size}|{info.st_mtime_ns}|{info.st_ctime_ns}|{info.st_ino}".encode()


def write_json(path: Path, obj, mode: Optional[int] = None) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2)), mode)
