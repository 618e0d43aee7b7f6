"""The command line as a user meets it: train, clusters, evaluate, predict on the bundled digits."""

import json

import pytest
from PIL import Image

from conftest import run_cli

QUICK = ["--set", "train.epochs=3", "--set", "model.width=8", "--set", "train.progress=false"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    result = run_cli("train", *QUICK, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_train_writes_a_complete_run_folder(digits_run):
    out, stdout = digits_run
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["top1"] <= results["top5"] <= 1
    assert results["data"] == "digits" and results["epochs"] == 3 and results["seed"] == 0
    assert set(results["rules"]) == {"soft", "hard", "flat", "blend"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[0]["stage"] == "probe" and rows[1]["stage"] == "ccn"
    hierarchy = json.loads((out / "hierarchy.json").read_text())
    assert sorted(c for g in hierarchy["groups"] for c in g) == sorted(hierarchy["classes"])
    assert "top1" in stdout and "run folder" in stdout
    assert "epochs: 3" in (out / "config.yaml").read_text()


def test_evaluate_reproduces_the_saved_score(digits_run):
    out, _ = digits_run
    result = run_cli("evaluate", str(out))
    assert result.returncode == 0, result.stderr
    scored = json.loads(result.stdout)
    saved = json.loads((out / "results.json").read_text())
    assert scored["top1"] == pytest.approx(saved["top1"], abs=1e-6)


def _colour_folder(root, classes, train_per_class=6, shade=0):
    """A tiny image folder whose classes are colours (learnable in one epoch): train/ and test/."""
    import numpy as np
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("test", 2)):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.full((8, 8, 3), shade, np.uint8)
                pixels[..., k % 3] = 200 + rng.integers(0, 40) if not shade else 255
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A one-epoch flat run on a colour folder (about a second, in this process)."""
    import io

    from ccn import config as cfgmod
    from ccn.pipeline import run_training
    from ccn.runs import NewRun
    from ccn.tracking import RunLog

    base = tmp_path_factory.mktemp("folder")
    root = _colour_folder(base / "data", ["red", "green", "blue"])
    config = cfgmod.load(None, ["data.name=folder", f"data.root={root}", "model.width=4",
                                "train.epochs=1", "train.batch_size=6", "train.progress=false", "method.name=flat"])
    out = base / "run"
    with NewRun(out) as run:
        run_training(config, out, RunLog(out, stream=io.StringIO()), on_start=lambda: run.start(config))
    return out, root


def test_evaluate_uses_the_runs_saved_normalisation(folder_run, tmp_path):
    """The same test images next to training images of other colours (other channel statistics) score
    as the run did: evaluate normalises as the run learned to, not with the new folder's statistics."""
    import shutil
    out, root = folder_run
    other = _colour_folder(tmp_path / "other", ["red", "green", "blue"], train_per_class=2, shade=250)
    shutil.rmtree(other / "test")
    shutil.copytree(root / "test", other / "test")
    result = run_cli("evaluate", str(out), "--set", f"data.root={other}")
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "results.json").read_text())
    assert json.loads(result.stdout)["top1"] == pytest.approx(saved["top1"], abs=1e-6)

    from ccn import config as cfgmod
    import torch

    from ccn.data import load_dataset
    from ccn.data.prepare import prepare_data
    from ccn.plan import DataFacts, resolve
    config = cfgmod.load(out / "config.yaml", [f"data.root={other}"])
    ds = load_dataset(config.data)
    plan = resolve(config, DataFacts.of(ds))
    data = prepare_data(plan, torch.device("cpu"), ds=ds, preprocess=saved["preprocess"])
    own = prepare_data(plan, torch.device("cpu"), ds=ds)  # the other folder's statistics differ: the test can fail
    assert (data.normalize.mean.flatten() / 255).tolist() == pytest.approx(saved["preprocess"]["mean"], abs=1e-6)
    assert (own.normalize.mean.flatten() / 255).tolist() != pytest.approx(saved["preprocess"]["mean"], abs=1e-2)


def test_clusters_prints_groups_and_plots(digits_run):
    out, _ = digits_run
    result = run_cli("clusters", str(out), "--plot")
    assert result.returncode == 0, result.stderr
    assert "group  1" in result.stdout
    for name in ("dendrogram.png", "distances.png"):
        with Image.open(out / name) as image:
            assert image.size[0] > 200


def test_predict_on_image_files(digits_run, tmp_path):
    out, _ = digits_run
    from sklearn.datasets import load_digits
    image = (load_digits().images[0] * 16).astype("uint8")
    Image.fromarray(image).save(tmp_path / "zero.png")
    result = run_cli("predict", str(out), str(tmp_path / "zero.png"), "--top", "2")
    assert result.returncode == 0, result.stderr
    assert "zero.png:" in result.stdout and "(group" in result.stdout and "%" in result.stdout


def test_predict_on_a_corrupt_image_gives_predict_advice(digits_run, tmp_path):
    out, _ = digits_run
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = run_cli("predict", str(out), str(tmp_path / "broken.png"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "cannot read image" in result.stderr and "broken.png" in result.stderr
    assert "pass a JPEG, PNG" in result.stderr and "skip_bad_images" not in result.stderr


def test_existing_run_folder_is_refused_then_forced(digits_run):
    out, _ = digits_run
    before = (out / "results.json").read_text()
    result = run_cli("train", *QUICK, "--out", str(out))
    assert result.returncode == 2 and "already holds a run" in result.stderr and "--force" in result.stderr
    assert (out / "results.json").read_text() == before


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    result = run_cli("train", *QUICK, "--out", str(blocker))
    assert result.returncode == 2 and "is a file" in result.stderr
    assert blocker.read_text() == "mine"


def test_more_groups_than_classes(tmp_path):
    result = run_cli("train", *QUICK, "--set", "method.groups=11", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "method.groups=11 is impossible" in result.stderr
    assert "Traceback" not in result.stderr


def test_checkpoint_from_another_model_is_refused(digits_run, tmp_path):
    import shutil
    out, _ = digits_run
    other = tmp_path / "other"
    shutil.copytree(out, other)
    (other / "config.yaml").write_text((other / "config.yaml").read_text().replace("width: 8", "width: 16"))
    results = json.loads((other / "results.json").read_text())
    del results["format"], results["config_sha256"]  # a run saved before the digest: its weights are what tell
    (other / "results.json").write_text(json.dumps(results))
    result = run_cli("evaluate", str(other))
    assert result.returncode == 2 and "does not fit this model" in result.stderr


def test_evaluate_on_other_classes_of_the_same_count_is_refused(folder_run, tmp_path):
    """W4 (issue 21): a data set with as many classes but other names was scored as if it were the run's."""
    out, _ = folder_run
    other = _colour_folder(tmp_path / "other", ["cyan", "green", "blue"], train_per_class=1)
    result = run_cli("evaluate", str(out), "--set", f"data.root={other}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "does not have the classes the run learned (not learned by the run: cyan" in result.stderr


def test_class_names_are_compared_by_name_and_order():
    from ccn.errors import CCNError
    from ccn.runs import check_same_classes
    saved = {"num_classes": 3, "classes": ["cat", "dog", "owl"]}
    check_same_classes(saved, ["cat", "dog", "owl"], "pets")
    for classes, detail in ((["cat", "owl", "dog"], "the same names in another order"),
                            (["cat", "dog", "eel"], "not learned by the run: eel"),
                            (["cat", "dog"], "missing: owl")):
        with pytest.raises(CCNError, match=detail):
            check_same_classes(saved, classes, "pets")
    unnamed = {"num_classes": 2, "classes": None}  # read_results of a format-0 run that names no classes
    check_same_classes(unnamed, ["a", "b"], "old")  # checked by count
    with pytest.raises(CCNError, match="the run has 2 classes but data old has 3"):
        check_same_classes(unnamed, ["a", "b", "c"], "old")
