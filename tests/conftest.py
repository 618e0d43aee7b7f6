import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CCN_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own image cache, so tests never see each other's decoded folders."""
    monkeypatch.setenv("CCN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def caltech_root() -> Path:
    root = SHARED_DATA / "caltech101"
    if not (root / "101_ObjectCategories").is_dir():
        pytest.skip(f"Caltech-101 is not at {root} (set CCN_SHARED_DATA to the shared data folder)")
    return root


@pytest.fixture(scope="session")
def cifar10_jpeg_root(tmp_path_factory) -> Path:
    archive = SHARED_DATA / "cifar10-jpeg.tar.xz"
    if not archive.is_file():
        pytest.skip(f"the CIFAR-10 JPEG archive is not at {archive} (set CCN_SHARED_DATA)")
    dest = tmp_path_factory.mktemp("cifar10-jpeg")
    subprocess.run(["bash", str(SHARED_DATA / "unpack.sh"), str(dest)], check=True, capture_output=True)
    return dest / "cifar10-jpeg"


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run `python -m ccn ...` in a fresh process, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "ccn", *args], capture_output=True, text=True, cwd=cwd, env=env)


TINY_RUN = ["data.name=synthetic", "data.num_classes=6", "data.num_groups=2", "data.train_per_class=6",
            "data.test_per_class=2", "model.width=4", "train.epochs=2", "train.progress=false"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished two-epoch ccn run on 6 synthetic classes (about a second), for tests that damage its
    files: copy it first (shutil.copytree), never change it."""
    import io

    from ccn import config as cfgmod
    from ccn.pipeline import run_training
    from ccn.runs import NewRun
    from ccn.tracking import RunLog

    out = tmp_path_factory.mktemp("tiny") / "run"
    config = cfgmod.load(None, TINY_RUN)
    with NewRun(out) as run:
        run_training(config, out, RunLog(out, stream=io.StringIO()), on_start=lambda: run.start(config))
    return out



@pytest.fixture
def damaged_run(tiny_run, tmp_path) -> Path:
    """A copy of the session's tiny finished ccn run (6 classes, 2 groups), to age or damage."""
    shutil.copytree(tiny_run, tmp_path / "run")
    return tmp_path / "run"


def edit_json(path: Path, change) -> None:
    """Apply `change` (a function that edits a dict in place) to the JSON file at `path`."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))

# ---------------------------------------------------------------- runs under a real memory limit (cgroup v1)

MEMORY_CGROUP = Path("/sys/fs/cgroup/memory")


def memory_cgroup_unavailable() -> str:
    """Why a test cannot put a run under a memory limit of its own here ("" when it can)."""
    if not (MEMORY_CGROUP / "memory.limit_in_bytes").is_file():
        return "no cgroup v1 memory controller at /sys/fs/cgroup/memory"
    if os.geteuid() != 0:
        return "creating a memory cgroup needs root"
    return ""


def train_auto_and_memory_stores_under(limit: int, keys: list, out: Path, timeout: int) -> dict:
    """`ccn train --set KEY ...` with data.store=auto, then data.store=memory (each --out OUT/auto, OUT/memory),
    each in a child process that first joins a new memory cgroup limited to `limit` bytes; {store kind:
    CompletedProcess}. Whatever is left in the group is killed and the group removed afterwards."""
    import signal
    import textwrap
    import time

    group = MEMORY_CGROUP / f"ccn-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
        script = textwrap.dedent(f"""
            import os, sys
            open({str(group / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))
            from ccn.cli import main
            sys.exit(main(sys.argv[1:]))
        """)
        runs = {}
        for store_kind in ("auto", "memory"):
            args = [a for key in [*keys, f"data.store={store_kind}"] for a in ("--set", key)]
            runs[store_kind] = subprocess.run(
                [sys.executable, "-c", script, "train", *args, "--out", str(out / store_kind)], capture_output=True,
                text=True, timeout=timeout, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        return runs
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.5)
        group.rmdir()


def assert_auto_finishes_on_disk_and_memory_is_killed(runs: dict) -> None:
    """What train_auto_and_memory_stores_under should show: auto picks the disk store and finishes; the
    memory store is killed by the limit, so the limit is real."""
    import signal

    assert runs["auto"].returncode == 0, runs["auto"].stderr[-2000:]
    assert "data store: disk: auto" in runs["auto"].stdout + runs["auto"].stderr
    assert runs["memory"].returncode == -signal.SIGKILL, runs["memory"].stderr[-2000:]  # killed by the limit
