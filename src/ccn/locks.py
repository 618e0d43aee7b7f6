"""One writer per folder: an exclusive lock on FOLDER/.ccn-lock, held for as long as a run writes there.

The lock is `flock` (non-blocking): the kernel drops it when the holder exits, even after SIGKILL,
so a killed run never leaves a folder locked; a later process simply takes the leftover file.
The holder writes its pid, host, start time and command into the file, so a second process can
say who holds the folder. The file is removed on release.

The lock file is opened without following links (O_NOFOLLOW) and must be a plain file of its own:
a symbolic link, hard link, FIFO or folder planted at FOLDER/.ccn-lock is refused, so taking a lock
can never create or overwrite a file elsewhere.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Optional

from ccn.errors import CCNError
from ccn.files import try_lock

LOCK_FILE = ".ccn-lock"
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def _holder_line() -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    command = " ".join(["ccn", *sys.argv[1:]])[:200]
    return f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


class FolderLock:
    """Exclusive use of `folder` by this process; `what` names the folder in messages ("run folder")."""

    def __init__(self, folder: Path, what: str = "folder", fix: str = "choose a writable folder"):
        self.folder, self.what, self.fix = Path(folder), what, fix
        self.path = self.folder / LOCK_FILE
        self.fd: Optional[int] = None

    def acquire(self) -> "FolderLock":
        """Take the lock or raise CCNError naming the holder; creates `folder` when missing."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            while self.fd is None:
                fd = self._open()
                if not self._lock(fd):
                    holder = os.read(fd, 1000).decode(errors="replace").strip() or "it is starting"
                    os.close(fd)
                    raise CCNError(f"{self.what} {self.folder} is in use by another ccn process ({holder}): wait for "
                                   "it to finish, or choose another folder")
                if _same_file(fd, self.path):
                    self.fd = fd
                else:  # the previous holder removed the file between our open and our lock: take the new one
                    os.close(fd)
            os.ftruncate(self.fd, 0)
            os.write(self.fd, (_holder_line() + "\n").encode())
        except OSError as err:
            self.release()
            raise CCNError(f"cannot write to {self.what} {self.folder} ({err.strerror or err}): {self.fix}") from None
        return self

    def _open(self) -> int:
        """The lock file, created if missing; CCNError unless it is a plain file with no other name."""
        try:
            fd = os.open(self.path, _OPEN_FLAGS, 0o644)
        except OSError as err:
            if err.errno not in (errno.ELOOP, errno.EISDIR):  # ELOOP: a symbolic link, refused by O_NOFOLLOW
                raise
            raise self._refusal("a symbolic link" if os.path.islink(self.path) else "a folder") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise self._refusal("a hard link to another file" if stat.S_ISREG(info.st_mode) else "a special file")
        return fd

    def _refusal(self, kind: str) -> CCNError:
        return CCNError(f"{self.path} is {kind}, not a lock file of ccn's: remove it (ccn writes its own there; "
                       "nothing was written through it)")

    @staticmethod
    def _lock(fd: int) -> bool:
        """False only while another process holds the folder. Without flock (Windows) folders are not
        locked; a file system without locks (ENOLCK) raises, and acquire says the folder cannot be written."""
        return try_lock(fd) is not False

    def release(self) -> None:
        """Remove the lock file, then unlock (in this order, so nobody locks a file about to vanish)."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder: the leftover file holds no lock once we close it
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
