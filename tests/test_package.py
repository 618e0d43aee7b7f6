"""ccn as an installed package: the wheel holds the recipes, the license and the metadata, and runs
outside any checkout (issue 31)."""

import email
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import ccn
from ccn.recipes import PACKAGED
from conftest import REPO


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel of this checkout, built from a copy of its sources (the build writes nothing into the
    checkout) without network: setuptools comes from the environment running the tests."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path / "wheel"
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                             "-q", "-w", str(out), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("ccn-*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_runs_a_packaged_recipe_by_name_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = email.message_from_bytes(archive.read(f"ccn-{ccn.__version__}.dist-info/METADATA"))
    recipes = {p.relative_to(PACKAGED.parent.parent).as_posix() for p in PACKAGED.rglob("*.yaml")}
    assert recipes and recipes <= names, sorted(recipes - names)  # every recipe, the grids included
    assert f"ccn-{ccn.__version__}.dist-info/licenses/LICENSE" in names
    assert metadata["Version"] == ccn.__version__ and metadata["License-Expression"] == "MIT"
    assert metadata["Author"] and metadata["Keywords"] and metadata.get_all("Classifier")
    assert metadata.get_all("Project-URL") and "torch>=2.4" in metadata.get_all("Requires-Dist")

    # installed as pip installs it (torch and the rest come from this environment), used from elsewhere
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                             str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONUNBUFFERED": "1"}  # not this checkout's src

    def installed(*args):
        command = [sys.executable, "-c", "import sys; from ccn.cli import main; sys.exit(main())", *args]
        return subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)

    where = subprocess.run([sys.executable, "-c", "import ccn; print(ccn.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True)
    assert Path(where.stdout.strip()).is_relative_to(site), where
    script = site / "bin" / "ccn"  # the console script pip wrote
    version = subprocess.run([str(script), "--version"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith(f"ccn {ccn.__version__} (torch "), version
    listing = installed("configs")
    assert listing.returncode == 0 and "cifar10_cpu_10min" in listing.stdout and "digits_quick" in listing.stdout
    trained = installed("train", "--config", "digits", "--set", "train.epochs=2", "--set", "train.progress=false",
                        "--out", "run")
    assert trained.returncode == 0, trained.stderr
    assert (elsewhere / "run" / "results.json").is_file()
    as_in_readme = installed("train", "--config", "configs/digits.yaml", "--set", "train.epochs=0", "--out", "r2")
    assert "train.epochs must be" in as_in_readme.stderr  # the README's spelling finds the packaged file too
