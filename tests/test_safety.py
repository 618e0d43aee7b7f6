"""Hostile inputs of issue 21 (security, hangs, data loss, groups files, tracebacks): planted links
are never written through, groups files that would hang are refused fast, a widened grid keeps the
old one reportable, and every odd path or pipe ends in one line (or quietly)."""

import io
import os
import stat

import pytest

from ccn import config as cfgmod
from ccn.errors import CCNError
from ccn.files import atomic_write
from ccn.locks import LOCK_FILE, FolderLock
from ccn.pipeline import run_training
from ccn.runs import RUN_FILES, NewRun
from ccn.tracking import RunLog
from conftest import TINY_RUN, run_cli


def _one_line(result, *fragments) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.startswith("ccn: error: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    return result.stderr


# ---------------------------------------------------------------- S1: the run lock and links


@pytest.mark.parametrize("dangling", [False, True], ids=["lock-link-to-file", "lock-link-dangling"])
def test_a_linked_lock_file_is_refused_and_never_written_through(tmp_path, dangling):
    out, victim = tmp_path / "run", tmp_path / "victim.txt"
    out.mkdir()
    if not dangling:
        victim.write_text("keep\n")
    (out / LOCK_FILE).symlink_to(victim)
    with pytest.raises(CCNError, match="is a symbolic link, not a lock file of ccn's: remove it"):
        FolderLock(out, "run folder").acquire()
    assert victim.read_text() == "keep\n" if not dangling else not victim.exists()
    assert os.path.islink(out / LOCK_FILE)  # the user's link is left as it was
    _one_line(run_cli("train", *[a for kv in TINY_RUN for a in ("--set", kv)], "--out", str(out)),
              "symbolic link")
    assert victim.read_text() == "keep\n" if not dangling else not victim.exists()
    assert os.listdir(out) == [LOCK_FILE]  # the refused run wrote nothing


def test_a_hard_linked_or_special_lock_file_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    os.link(victim, out / LOCK_FILE)
    with pytest.raises(CCNError, match="is a hard link to another file"):
        FolderLock(out).acquire()
    assert victim.read_text() == "keep\n"
    (out / LOCK_FILE).unlink()
    os.mkfifo(out / LOCK_FILE)
    with pytest.raises(CCNError, match="is a special file"):
        FolderLock(out).acquire()
    (out / LOCK_FILE).unlink()
    with FolderLock(out):  # a plain folder locks as before, and the lock file goes with the lock
        assert (out / LOCK_FILE).is_file()
    assert not (out / LOCK_FILE).exists()


# ---------------------------------------------------------------- S2: temporary files


def test_links_at_the_old_temporary_names_are_never_written_through(tmp_path):
    """The old temporary names were `.NAME.<pid>.tmp`: links planted there for this process (and its
    neighbours) must stay untouched through a whole run, and every run file is written."""
    out, victim = tmp_path / "run", tmp_path / "victim.txt"
    victim.write_text("keep\n")
    out.mkdir()
    planted = []
    for name in RUN_FILES + ("hierarchy.json",):
        for pid in range(os.getpid() - 2, os.getpid() + 3):
            for pattern in (f".{name}.{pid}.tmp", f"{name}.{pid}.tmp"):
                if not (out / pattern).is_symlink():
                    (out / pattern).symlink_to(victim)
                    planted.append(out / pattern)
    config = cfgmod.load(None, [*TINY_RUN, "method.name=ccn"])
    with NewRun(out) as run:
        run_training(config, out, RunLog(out, stream=io.StringIO()), on_start=lambda: run.start(config))
    assert victim.read_text() == "keep\n"
    assert all(link.is_symlink() for link in planted)
    assert (out / "results.json").is_file() and (out / "config.yaml").is_file()


def test_atomic_write_makes_a_fresh_private_name_and_ordinary_permissions(tmp_path):
    seen = []
    atomic_write(tmp_path / "a.txt", lambda tmp: (seen.append(tmp), tmp.write_text("one")))
    atomic_write(tmp_path / "a.txt", lambda tmp: (seen.append(tmp), tmp.write_text("two")))
    assert seen[0] != seen[1] and all(p.parent == tmp_path and p.name.startswith(".a.txt.") for p in seen)
    assert (tmp_path / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary file left
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask
