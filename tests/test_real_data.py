"""End-to-end runs on the real image data in ../shared/data (skipped when it is absent)."""

import json

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_ccn_on_the_cifar10_jpeg_copy(cifar10_jpeg_root, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--set", "data.name=folder", "--set", f"data.root={cifar10_jpeg_root}",
                     "--set", "data.train_per_class=200", "--set", "data.test_per_class=100",
                     "--set", "model.width=16", "--set", "train.epochs=4", "--set", "train.batch_size=64",
                     "--set", "train.progress=false", "--out", str(out))
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["num_classes"] == 10 and results["train_images"] == 2000
    assert results["top1"] > 0.2  # well above chance (0.1) after 4 short epochs


def test_flat_on_caltech101(caltech_root, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--set", "data.name=caltech101", "--set", f"data.root={caltech_root}",
                     "--set", "data.train_per_class=10", "--set", "data.test_per_class=5",
                     "--set", "method.name=flat", "--set", "model.width=8", "--set", "train.epochs=2",
                     "--set", "train.progress=false", "--out", str(out))
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["num_classes"] == 101 and results["test_images"] == 505
