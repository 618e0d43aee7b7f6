"""Writing files safely: every file ccn writes goes through atomic_write, so a crash, a full disk or a
read-only folder leaves the previous file intact and is reported in one line. The bottom layer:
it needs only ccn.errors, so any module can write a file without importing torch or safetensors."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ccn.errors import WriteError


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), fsync it, then rename over `path`: a crash leaves the old file intact.

    A failed write (full disk, read-only folder, no permission) is a WriteError, one line."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise WriteError(f"could not write {path} ({err.strerror or err}): free disk space or make the folder "
                         "writable; the previous file, if any, is unchanged") from None
    finally:
        _discard(tmp)


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
