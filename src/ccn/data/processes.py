"""Worker processes that decode images (the stores' Pool and the stream's DecodePool): they end with
the process that started them, and how one ended is said in words."""

from __future__ import annotations

import os
import signal


def die_with_parent(parent: int) -> None:
    """Decoding workers end when the process that started them ends, even by kill -9 or the OOM
    killer (Linux: the kernel sends SIGKILL at the parent's death), instead of idling on as orphans."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # not Linux: the pools still end idle workers (their pipes close; the stream checks the parent pid)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def how_it_ended(exitcode: int) -> str:
    """'was killed by SIGKILL' / 'exited with code 1', for a multiprocessing exit code."""
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"
