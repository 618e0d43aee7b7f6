"""Writing files safely: every file ccn writes goes through atomic_write, so a crash, a full disk or a
read-only folder leaves the previous file intact and is reported in one line. The bottom layer:
it needs only ccn.errors, so any module can write a file without importing torch or safetensors."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from functools import lru_cache
from pathlib import Path

from ccn.errors import CCNError, WriteError


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), fsync it, then rename over `path`: a crash leaves the old file intact.

    The temporary file is created afresh beside `path` under an unpredictable name (O_EXCL |
    O_NOFOLLOW, as tempfile.mkstemp does), so a link planted where ccn writes is never written
    through. A failed write (full disk, read-only folder, no permission) is a WriteError, one line."""
    path = Path(path)
    tmp = None
    try:
        tmp = new_temporary_file(path)
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise WriteError(f"could not write {path} ({err.strerror or err}): {_write_fix(path)}") from None
    finally:
        if tmp is not None:
            _discard(tmp)


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


def new_temporary_file(path: Path) -> Path:
    """An empty file of ours beside `path`, named `.NAME.<pid>.<random>.tmp` (run folders clean up
    `.NAME.*.tmp`; the image store removes those whose pid is gone), with the permissions a plain
    new file gets (mkstemp's own are owner-only). The random part makes the name unpredictable."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(name)


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


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2)))


# ---------------------------------------------------------------- reading files ccn did not write itself


def node_kind(mode: int) -> str:
    """What a file-system node is, in the words an error line uses ("a FIFO", "a folder" ...)."""
    for test, words in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return words
    return "not a regular file"


def node_problem(mode: int) -> str:
    """"is a FIFO, not a regular file" (or a folder, device, socket); "" for a regular file."""
    if stat.S_ISREG(mode):
        return ""
    kind = node_kind(mode)
    return "is a folder" if kind == "a folder" else f"is {kind}, not a regular file"


def open_regular(path, what: str, fix: str = "", error: type = CCNError) -> tuple[int, int]:
    """(file descriptor, size) of `path` opened for reading, which must be a regular file: opened with
    O_NONBLOCK, so a FIFO planted there cannot block the open, then checked with fstat on the open
    file (not a stat before it, which a swap could outrun). A missing file, a folder, a FIFO, a device
    or a socket is one `error` line: "<what> <path> is a FIFO, not a regular file: <fix>"."""
    tail = f": {fix}" if fix else ""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise error(f"{what} {path} does not exist{tail}") from None
    except OSError as err:  # ENXIO: a socket; EACCES, ELOOP ...
        try:
            problem = node_problem(os.stat(path).st_mode) or f"cannot be read ({err.strerror or err})"
        except OSError:
            problem = f"cannot be read ({err.strerror or err})"
        raise error(f"{what} {path} {problem}{tail}") from None
    try:
        info = os.fstat(fd)
        problem = node_problem(info.st_mode)
        if problem:
            raise error(f"{what} {path} {problem}{tail}")
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def regular_file_size(path, what: str, fix: str = "", limit: int | None = None, error: type = CCNError) -> int:
    """The size of `path` once it is known to be a regular file of at most `limit` bytes (see
    open_regular): for readers that open the file themselves (safetensors, numpy's memory map)."""
    fd, size = open_regular(path, what, fix, error)
    os.close(fd)
    _check_size(path, size, limit, what, fix, error)
    return size


def read_regular_bytes(path, limit: int, what: str, fix: str = "", error: type = CCNError) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them: a FIFO, device, socket or folder
    (open_regular), or a file larger than `limit` (by its size, or by what a read finds when it grew
    or a file system reports no size) is one `error` line, never a hang or a read without end."""
    fd, size = open_regular(path, what, fix, error)
    with os.fdopen(fd, "rb") as handle:
        _check_size(path, size, limit, what, fix, error)
        try:
            data = handle.read(limit + 1)
        except OSError as err:
            raise error(f"cannot read {what} {path} ({err.strerror or err})" + (f": {fix}" if fix else "")) from None
    _check_size(path, len(data), limit, what, fix, error, found="larger than its size said (it grows, or never ends)")
    return data


def _check_size(path, size: int, limit: int | None, what: str, fix: str, error: type, found: str = "") -> None:
    if limit is not None and size > limit:
        raise error(f"{what} {path} is {found or f'{size} bytes'}, more than the {limit} bytes a {what} may have"
                    + (f": {fix}" if fix else ""))
