"""The decoded-image cache trusts nothing it did not write (issue 30, the cache and memory part):
files are read only when they are regular files of bounded size (ccn.files.open_regular), the cache
folder and its entries must be private, every store entry's content and labels are checksummed,
temporaries of killed writers are removed by any later run (judged by a lock, not a pid), a stalled
stream worker is named, and a run's own memory does not grow with its data."""

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from ccn.files import UnsafeFile, open_regular, read_regular_bytes

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
    assert done == ["is not a regular file (a FIFO, socket or device)"]  # it used to block for ever


def test_a_device_or_endless_file_is_refused(tmp_path):
    link = tmp_path / "zero.json"
    link.symlink_to("/dev/zero")
    assert _problem(link, 100) == "is not a regular file (a FIFO, socket or device)"
    assert _problem(link, 100, follow_links=False) == "is a symbolic link"
    big = tmp_path / "big.json"
    big.write_bytes(b"x" * 101)
    assert _problem(big, 100) == "is 101 bytes, more than the 100 a thing may have"
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
