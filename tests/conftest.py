import os
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
