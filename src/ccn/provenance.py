"""Which code produced a run: the package's git commit and whether its tree had changes, the ccn
and torch versions (results.json `code`, summary.json `code`).

The commit is read from the package's own source tree when that is a git checkout (an editable
install from a clone), never from the working directory: a run started from elsewhere still names
the code it ran. An installed wheel, or a machine without git, records "unknown"."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # src/ccn/provenance.py -> the checkout's root
UNKNOWN = "unknown"


def _git(*args: str) -> str | None:
    """Output of a read-only git command in the package's checkout, or None when that fails.
    fsmonitor is switched off so that `git status` starts no program a repository config names."""
    try:
        done = subprocess.run(["git", "-c", "core.fsmonitor=false", "-C", str(SOURCE_ROOT), *args],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def _is_checkout() -> bool:
    top = _git("rev-parse", "--show-toplevel") if (SOURCE_ROOT / ".git").exists() else None
    return top is not None and Path(top).resolve() == SOURCE_ROOT


def code_version() -> dict:
    """{"commit": sha or "unknown", "dirty": bool or "unknown" (tracked files changed), "ccn", "torch"}.

    Read once per process, when first asked (the first run's start): a process keeps running the code
    it imported, so a checkout that moves on while a grid runs for hours must not relabel the grid's
    later runs with commits they never ran (the converged study's first record named 19 versions
    for what were 9 processes). A grid resumed in a new process records the code of that process."""
    return dict(_code_of_this_process())


@functools.lru_cache(maxsize=1)
def _code_of_this_process() -> dict:
    import torch  # here: describing a recorded version (a report) needs no torch

    commit, dirty = UNKNOWN, UNKNOWN
    if _is_checkout():
        commit = _git("rev-parse", "HEAD") or UNKNOWN
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = bool(status) if status is not None else UNKNOWN
    return {"commit": commit, "dirty": dirty, "ccn": _package_version(), "torch": torch.__version__}


def _package_version() -> str:
    try:
        return metadata.version("ccn")
    except metadata.PackageNotFoundError:  # run from a source tree without installing it
        return UNKNOWN


def describe_code(code: dict | None) -> str:
    """One phrase for a report: 'commit 1a2b3c4 (clean), ccn 0.1.0, torch 2.13.0+cpu'."""
    if not isinstance(code, dict):
        return "code not recorded (a run from before provenance was recorded)"
    commit = code.get("commit", UNKNOWN)
    short = commit[:10] if commit != UNKNOWN else "unknown commit"
    state = {True: "with uncommitted changes", False: "clean"}.get(code.get("dirty"), "tree state unknown")
    return f"commit {short} ({state}), ccn {code.get('ccn', UNKNOWN)}, torch {code.get('torch', UNKNOWN)}"
