"""Writing files safely: every file ccn writes goes through atomic_write, so a crash, a full disk or a
read-only folder leaves the previous file intact and is reported in one line. The bottom layer:
it needs only ccn.errors, so any module can write a file without importing torch or safetensors."""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

from ccn.errors import WriteError


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
    """open(path, "a"), except that a symbolic link planted at `path` is refused (ELOOP), not followed."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
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
