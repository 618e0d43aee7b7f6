"""The prepared accelerator check, in its reduced CPU form (benchmarks/device_check.py --quick)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA

ARCHIVES = [REPO / "device_data" / "cifar10-jpeg.tar.xz", SHARED_DATA / "cifar10-jpeg.tar.xz"]


@pytest.mark.slow
def test_quick_cpu_device_check_covers_every_section(tmp_path):
    archive = next((a for a in ARCHIVES if a.is_file()), None)
    if archive is None:
        pytest.skip("no CIFAR-10 JPEG archive (python benchmarks/device_check.py --prepare, or set CCN_SHARED_DATA)")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "device_check.py"), "--out", str(tmp_path),
                             "--device", "cpu", "--quick", "--archive", str(archive), "--budget", "900"],
                            capture_output=True, text=True)
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    sections = report["sections"]
    assert set(sections) == {"cuda_tests", "benchmarks", "recipe_cost", "compile", "augment", "study",
                             "timm", "classes", "stream", "speed_recipe"}
    assert sections["classes"]["classes"] == 400 and sections["classes"]["ari"] == 1.0
    assert sections["cuda_tests"]["failed"] == 0 and sections["cuda_tests"]["skipped"] >= 3  # no GPU here
    figures = next(iter(sections["benchmarks"]["models"].values()))
    assert all(v > 0 for v in figures["images_per_s"].values()) and figures["ours_over_peer"] > 0
    assert sections["recipe_cost"]["images_per_s"] > 0
    assert sections["compile"]["status"] == "passed" and sections["compile"]["device"] == "cpu"
    assert len(sections["study"]["runs"]) == 4 and "ccn" in sections["study"]["paired"]
    assert sections["stream"]["images_per_s"]["stream"] > 0 and sections["stream"]["stream_over_memory"] > 0
    recipes = sections["speed_recipe"]["recipes"]
    assert set(recipes) == {"cifar10_cpu_10min", "cifar10_cpu_30min"}
    assert all(r["epochs"] == 4 and r["train_seconds"] > 0 and 0 <= r["top1"] <= 1 for r in recipes.values())
    assert report["device"] == "cpu" and report["torch"]
    assert (tmp_path / "device_check.log").stat().st_size > 0
