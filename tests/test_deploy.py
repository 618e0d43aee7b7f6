"""What users of a trained run build on: `ccn predict --json`, `ccn export` (ONNX), `model.init`."""

import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ccn import config as cfgmod
from ccn.dist import World
from ccn.errors import CCNError, ConfigError
from ccn.heads import FlatHead
from ccn.model_init import load_initial_weights
from ccn.models import Classifier
from ccn.models.fastnet import FastNet
from ccn.models.timm_adapter import TimmBackbone
from ccn.network import build_model
from conftest import run_cli

QUICK = ["model.width=8", "train.progress=false", "data.train_per_class=20", "data.test_per_class=5",
         "train.batch_size=32"]


def train(out, *overrides):
    args = [a for o in [*QUICK, *overrides] for a in ("--set", o)]
    result = run_cli("train", *args, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out, result.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A flat run, a ccn run started from it (model.init) and a depth-2 run ranked by the hard rule."""
    base = tmp_path_factory.mktemp("runs")
    flat, _ = train(base / "flat", "method.name=flat", "train.epochs=2")
    ccn, ccn_log = train(base / "ccn", "method.name=ccn", "train.epochs=2", f"model.init={flat}")
    depth2, _ = train(base / "depth2", "method.name=ccn", "method.depth=2", "method.split_min_size=3",
                      "method.inference=hard", "train.epochs=3")
    tta, _ = train(base / "tta", "method.name=flat", "train.epochs=2", "train.tta=mirror_translate",
                   "data.flip=true")  # digits are flipped only when asked: TTA mirrors need it
    return {"flat": flat, "ccn": ccn, "depth2": depth2, "tta": tta, "ccn_log": ccn_log}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from sklearn.datasets import load_digits
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, image in enumerate(load_digits().images[:5]):
        paths.append(folder / f"digit{i}.png")
        Image.fromarray((image * 16).astype("uint8")).save(paths[-1])
    return [str(p) for p in paths]


def predict_json(run, images, top=3):
    result = run_cli("predict", str(run), *images, "--top", str(top), "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]  # JSON Lines: one object per image


# ---------------------------------------------------------------- predict --json


def test_predict_json_gives_top_classes_probabilities_and_groups(runs, images):
    predictions = predict_json(runs["ccn"], images)
    groups = json.loads((runs["ccn"] / "hierarchy.json").read_text())["groups"]
    assert [p["path"] for p in predictions] == images
    for entry in predictions:
        probs = [g["probability"] for g in entry["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
        for guess in entry["top"]:  # group: 1-based, as `ccn clusters` numbers them
            assert guess["class"] in groups[guess["group"] - 1]
    text = run_cli("predict", str(runs["ccn"]), images[0]).stdout
    first = predictions[0]["top"][0]
    assert f"{first['class']} {100 * first['probability']:.1f}% (group {first['group']})" in text
    flat = predict_json(runs["flat"], images[:1], top=10)[0]["top"]
    assert all(g["group"] is None for g in flat) and sum(g["probability"] for g in flat) == pytest.approx(1, abs=1e-5)


def test_predict_scores_the_test_time_views_the_run_was_scored_with(runs, images):
    """A run trained with train.tta: `ccn predict` averages the same views as its results.json scores."""
    from ccn.data.augment import Normalize
    from ccn.predict import class_probabilities, prepared_images
    from ccn.runs import load_run
    _, model, _, saved = load_run(runs["tta"])
    prep = saved["preprocess"]
    x = Normalize(prep["mean"], prep["std"])(prepared_images(prep, images))
    model.eval()
    with torch.no_grad():
        views, plain = class_probabilities(model, x, "flat", "mirror_translate"), class_probabilities(model, x, "flat")
    assert not torch.allclose(views, plain, atol=1e-4)  # the views change the numbers ...
    for row, entry in zip(views, predict_json(runs["tta"], images, top=10)):  # ... and predict prints them
        for guess in entry["top"]:
            assert row[saved["classes"].index(guess["class"])].item() == pytest.approx(guess["probability"], abs=1e-6)



# ---------------------------------------------------------------- predict: folders, globs, batches (issue 31)


def _small_pngs(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"img{i:05d}.png")


def test_predict_takes_files_folders_and_quoted_globs(tiny_run, tmp_path, capsys):
    from ccn.cli import main
    _small_pngs(tmp_path / "a" / "deep", 3)
    _small_pngs(tmp_path / "b", 2)
    (tmp_path / "a" / "notes.txt").write_text("not an image")  # a folder's other files are not images
    _small_pngs(tmp_path / "a" / ".thumbs", 1)  # hidden folders are skipped
    single = tmp_path / "b" / "img00000.png"
    pattern = str(tmp_path / "**" / "img0000[01].png")  # quoted: ccn expands it, recursively
    assert main(["predict", str(tiny_run), str(single), str(tmp_path / "a"), pattern, "--json", "--top", "2"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = ([single] + [tmp_path / "a" / "deep" / f"img{i:05d}.png" for i in range(3)]
                + sorted([tmp_path / "a" / "deep" / "img00000.png", tmp_path / "a" / "deep" / "img00001.png",
                          tmp_path / "b" / "img00000.png", tmp_path / "b" / "img00001.png"]))
    assert [r["path"] for r in records] == [str(p) for p in expected]
    assert all(len(r["top"]) == 2 for r in records)
    assert records[0]["top"] == records[-2]["top"]  # the same file, found twice, scored alike


@pytest.mark.parametrize("source, message", [
    ("empty", "image folder {tmp}/empty holds no JPEG, PNG"),
    ("{tmp}/*.jpeg", "image pattern '{tmp}/*.jpeg' matches no file"),
])
def test_predict_refuses_an_empty_folder_and_a_pattern_that_matches_nothing(tiny_run, tmp_path, capsys, source,
                                                                           message):
    from ccn.cli import main
    (tmp_path / "empty").mkdir()
    source = source.format(tmp=tmp_path) if "{" in source else str(tmp_path / source)
    assert main(["predict", str(tiny_run), source]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("ccn: error: " + message.format(tmp=tmp_path))


def test_predict_decodes_thousands_of_images_one_bounded_batch_at_a_time(tiny_run, tmp_path, monkeypatch, capsys):
    """3,000 images, batches of 64: never more than one batch decoded and not yet scored (memory flat in the
    number of files), and each batch's lines printed before the next batch is decoded."""
    import ccn.predict
    from ccn.cli import main
    _small_pngs(tmp_path / "many", 3000)
    events = []
    decode, score = ccn.predict.read_image, ccn.predict.class_probabilities
    monkeypatch.setattr(ccn.predict, "read_image", lambda *a, **k: events.append("decode") or decode(*a, **k))
    def scored(*args, **kwargs):  # records how many lines were printed since the last batch was scored
        events.append(("score", len(capsys.readouterr().out.splitlines())))
        return score(*args, **kwargs)

    monkeypatch.setattr(ccn.predict, "class_probabilities", scored)
    assert main(["predict", str(tiny_run), str(tmp_path / "many"), "--json", "--batch-size", "64"]) == 0
    decoded_unscored = 0
    for event in events:
        decoded_unscored = decoded_unscored + 1 if event == "decode" else 0
        assert decoded_unscored <= 64
    batches = [event[1] for event in events if event != "decode"]
    assert events.count("decode") == 3000 and len(batches) == -(-3000 // 64)  # 47 batches
    # the lines printed before each batch is scored: every earlier batch's, none of its own
    assert list(itertools.accumulate(batches)) == [64 * k for k in range(len(batches))]
    assert sum(batches) + len(capsys.readouterr().out.splitlines()) == 3000


@pytest.mark.parametrize("size", ["0", "-5"])
def test_predict_batch_size_must_be_positive(tiny_run, tmp_path, capsys, size):
    from ccn.cli import main
    _small_pngs(tmp_path, 1)
    assert main(["predict", str(tiny_run), str(tmp_path), "--batch-size", size]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip() == (f"ccn: error: --batch-size {size} decodes no images: give "
                                                           "1 or more (e.g. --batch-size 64)")


# ---------------------------------------------------------------- export


def onnx_probabilities(model_file, images):
    import onnxruntime
    info = json.loads(model_file.with_name(model_file.name + ".json").read_text())
    size = info["image_size"]
    batch = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR), np.float32)
                      for p in images]).transpose(0, 3, 1, 2) / 255
    batch = (batch - np.array(info["mean"])[:, None, None]) / np.array(info["std"])[:, None, None]
    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    return info, session.run(["probabilities"], {"images": batch.astype(np.float32)})[0]


def test_evaluate_refuses_test_time_mirrors_of_data_that_is_never_flipped(runs):
    """`ccn evaluate RUN --set train.tta=mirror` on digits scored mirrored glyphs and lowered the score
    silently; the run trained with data.flip=true is still scored with its views."""
    for tta in ("mirror", "mirror_translate"):
        result = run_cli("evaluate", str(runs["flat"]), "--set", f"train.tta={tta}")
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == (f"ccn: error: train.tta={tta} scores mirror images, but data digits is not "
                                         "flipped (a flip would change its labels' meaning): set train.tta=none, or "
                                         "data.flip=true if mirror images keep their labels' meaning")
    assert run_cli("evaluate", str(runs["tta"])).returncode == 0


def _skip_without_export_packages():
    from ccn.export import exporter
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if exporter() == "dynamo":
        pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript: pip install 'ccn[export]'")


@pytest.mark.parametrize("name", ["flat", "ccn", "depth2", "tta"])
def test_onnx_export_gives_the_probabilities_predict_prints(runs, images, tmp_path, name):
    from ccn.export import exporter
    _skip_without_export_packages()
    model_file = tmp_path / f"{name}.onnx"
    result = run_cli("export", str(runs[name]), "--format", "onnx", "--out", str(model_file))
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # the exporters' notes (deprecations, constant folding) are silenced
    assert result.stdout.count("\n") == 1, result.stdout  # and so is the dynamo exporter's progress
    info, probs = onnx_probabilities(model_file, images)
    assert info["exporter"] == exporter() and info["opset"] == {"dynamo": 18, "torchscript": 17}[exporter()]
    saved = json.loads((runs[name] / "results.json").read_text())
    assert info["classes"] == saved["classes"] and len(info["mean"]) == len(info["std"]) == 3
    assert info["rule"] == {"flat": "flat", "ccn": "soft", "depth2": "hard", "tta": "flat"}[name]
    assert info["tta"] == ("mirror_translate" if name == "tta" else "none")  # the views are inside the graph
    assert probs.shape == (len(images), len(info["classes"])) and np.allclose(probs.sum(1), 1, atol=1e-5)
    for row, entry in zip(probs, predict_json(runs[name], images, top=10)):
        for guess in entry["top"]:
            assert row[info["classes"].index(guess["class"])] == pytest.approx(guess["probability"], abs=1e-5)


def test_the_torchscript_fallback_gives_the_same_probabilities(runs, images, tmp_path, monkeypatch, capsys):
    """A torch without the dynamo exporter (before 2.5) exports with the TorchScript one; tried here by
    making ccn see no dynamo exporter. The TTA run: the graph with the most to get wrong."""
    import ccn.export
    from ccn.cli import main
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(ccn.export, "exporter", lambda: "torchscript")
    model_file = tmp_path / "tta.onnx"
    assert main(["export", str(runs["tta"]), "--out", str(model_file)]) == 0
    info, probs = onnx_probabilities(model_file, images)
    assert info["exporter"] == "torchscript" and info["opset"] == 17 and capsys.readouterr().err == ""
    for row, entry in zip(probs, predict_json(runs["tta"], images, top=10)):
        for guess in entry["top"]:
            assert row[info["classes"].index(guess["class"])] == pytest.approx(guess["probability"], abs=1e-5)


@pytest.mark.parametrize("missing, which", [("onnxscript", "dynamo"), ("onnx", "dynamo"), ("onnx", "torchscript")])
def test_export_without_its_packages_is_one_line(tiny_run, tmp_path, monkeypatch, capsys, missing, which):
    """`ccn export` without onnx ended in a traceback, exit 1; the dynamo exporter also needs onnxscript."""
    import importlib.util

    import ccn.export
    from ccn.cli import main
    find_spec = importlib.util.find_spec
    present = {"onnx", "onnxscript"} - {missing}  # so the line names `missing` alone, whatever is installed here
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else
                        (object() if name in present else find_spec(name, *a)))
    monkeypatch.setattr(ccn.export, "exporter", lambda: which)
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "model.onnx")]) == 2
    assert capsys.readouterr().err.strip() == (f"ccn: error: ONNX export needs {missing}, not installed here: pip "
                                               "install 'ccn[export]' (onnx, onnxscript and onnxruntime; it installs "
                                               "no other torch)")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_an_existing_file_and_a_bad_run_folder(runs, tmp_path):
    _skip_without_export_packages()
    taken = tmp_path / "model.onnx"
    taken.write_text("mine")
    result = run_cli("export", str(runs["flat"]), "--out", str(taken))
    assert result.returncode == 2 and "already exists" in result.stderr and "--force" in result.stderr
    assert taken.read_text() == "mine"
    assert run_cli("export", str(runs["flat"]), "--out", str(taken), "--force").returncode == 0
    assert taken.stat().st_size > 1000 and (tmp_path / "model.onnx.json").is_file()
    result = run_cli("export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.onnx"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not a finished ccn run folder" in result.stderr


def test_export_never_writes_over_the_runs_own_files(runs, tmp_path):
    """`--out RUN/results --force` wrote its FILE.json over RUN/results.json, `--out RUN/model.safetensors
    --force` ONNX bytes over the weights; a new name inside the run folder is still fine."""
    _skip_without_export_packages()
    import shutil
    run = tmp_path / "run"
    shutil.copytree(runs["flat"], run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for out, hit in ((run / "results", "results.json"), (run / "model.safetensors", "model.safetensors"),
                     (run / "sub" / ".." / "config.yaml", "config.yaml"), (run / "metrics.jsonl", "metrics.jsonl")):
        for force in ([], ["--force"]):
            result = run_cli("export", str(run), "--out", str(out), *force)
            assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
            assert f"which is the run's own {hit}: choose another --out" in result.stderr, result.stderr
    link = tmp_path / "elsewhere"
    link.symlink_to(run, target_is_directory=True)  # the same folder by another name
    result = run_cli("export", str(run), "--out", str(link / "results"), "--force")
    assert result.returncode == 2 and "run's own results.json" in result.stderr, result.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert run_cli("export", str(run), "--out", str(run / "model.onnx")).returncode == 0
    assert (run / "model.onnx.json").is_file() and (run / "results.json").read_bytes() == before["results.json"]


# ---------------------------------------------------------------- model.init


def test_model_init_starts_training_from_the_saved_backbone_and_flat_head(runs):
    from ccn.pipeline import MethodRun
    from ccn.tracking import RunLog
    config = cfgmod.load(None, [*QUICK, "method.name=ccn", "train.epochs=2", f"model.init={runs['flat']}"])
    run = MethodRun(config, None, RunLog(None, enabled=False), World(), None)
    saved = load_file(str(runs["flat"] / "model.safetensors"))
    start = run.model.state_dict()
    for key in [k for k in saved if k.startswith(("backbone.", "head.flat."))]:
        assert torch.equal(start[key].cpu(), saved[key]), key
    record = json.loads((runs["ccn"] / "results.json").read_text())["init"]
    assert record["backbone"] and record["flat_head"] and record["from"].endswith("model.safetensors")
    assert "model.init: backbone from" in runs["ccn_log"]


def test_resume_does_not_need_the_model_init_file_again(runs, tmp_path):
    """A resumed run takes its weights from its checkpoint; the init file may be gone by then, and
    results.json still says where the run started from."""
    import shutil
    from ccn.pipeline import MethodRun
    from ccn.tracking import RunLog
    source = tmp_path / "source"
    shutil.copytree(runs["flat"], source)
    config = cfgmod.load(None, [*QUICK, "method.name=ccn", "train.epochs=2", f"model.init={source}"])
    (tmp_path / "run").mkdir()
    first = MethodRun(config, tmp_path / "run", RunLog(None, enabled=False), World(), None)
    first.trainer.step = len(first.data.train)  # as after epoch 1: a checkpoint's step must agree with its epoch
    first.save_checkpoint(1)
    shutil.rmtree(source)
    again = MethodRun(config, tmp_path / "run", RunLog(None, enabled=False), World(), None, resume=True)
    again.resume()
    assert again.init_record == first.init_record and again.init_record["flat_head"]


def test_model_init_that_does_not_fit_is_one_line_naming_file_and_mismatch(runs, tmp_path):
    result = run_cli("train", "--set", "model.width=16", "--set", f"model.init={runs['flat']}", "--set",
                     "train.progress=false", "--out", str(tmp_path / "wide"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "model.safetensors does not fit" in result.stderr and "(8," in result.stderr and "(16," in result.stderr


def test_a_bare_timm_style_file_maps_onto_the_adapter(tmp_path):
    """timm is not installed here: a stand-in module in the adapter, saved the way a timm user saves."""
    torch.manual_seed(0)
    trained = FastNet(width=4)  # the user's backbone, with its own classifier `fc` beside it
    fc = torch.nn.Linear(trained.num_features, 3)
    state = {**trained.state_dict(), "fc.weight": fc.weight.detach(), "fc.bias": fc.bias.detach()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "mine.safetensors"))
    config = cfgmod.from_dict({"model": {"name": "timm:standin", "init": str(tmp_path / "mine.safetensors")}})
    model = Classifier(TimmBackbone(FastNet(width=4)), FlatHead(trained.num_features, 3))
    record = load_initial_weights(model, config.model, config.train.bn_weight, ["a", "b", "c"])
    assert record["layout"] == "bare backbone" and record["flat_head"] and "note" in record
    assert all(torch.equal(model.backbone.model.state_dict()[k], v) for k, v in trained.state_dict().items())
    assert torch.equal(model.head.flat.weight, fc.weight)
    five = Classifier(TimmBackbone(FastNet(width=4)), FlatHead(trained.num_features, 5))
    record = load_initial_weights(five, config.model, config.train.bn_weight, list("abcde"))
    assert not record["flat_head"] and "3 classes" in record["flat_head_fresh_because"]


def test_a_bare_native_backbone_and_bad_sources(tmp_path):
    torch.manual_seed(0)
    trained = FastNet(width=4)
    save_file(trained.state_dict(), str(tmp_path / "backbone.safetensors"))
    config = cfgmod.from_dict({"model": {"name": "fastnet", "width": 4, "init": str(tmp_path / "backbone.safetensors")}})
    model = build_model(config.model, config.train, 3)
    record = load_initial_weights(model, config.model, config.train.bn_weight, ["a", "b", "c"])
    assert torch.equal(model.backbone.body[0].weight, trained.body[0].weight) and not record["flat_head"]
    with pytest.raises(ConfigError, match="safetensors only"):
        cfgmod.from_dict({"model": {"init": "weights.pth"}})
    missing = cfgmod.from_dict({"model": {"init": str(tmp_path / "none.safetensors")}})
    with pytest.raises(CCNError, match="does not exist"):
        load_initial_weights(build_model(missing.model, missing.train, 3), missing.model, missing.train.bn_weight,
                             ["a", "b", "c"])


def test_bn_weight_false_fixes_the_scales_at_one_with_model_init_too(tmp_path):
    """README: train.bn_weight=false keeps the BatchNorm scales at 1. With model.init they kept the
    file's trained scales (0.731, 1.149, ...) frozen instead; the rest of the file still loads."""
    torch.manual_seed(0)
    trained = FastNet(width=4)
    norms = [m for m in trained.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.weight.uniform_(0.5, 1.5)
    save_file(trained.state_dict(), str(tmp_path / "backbone.safetensors"))
    init = {"name": "fastnet", "width": 4, "init": str(tmp_path / "backbone.safetensors")}
    for bn_weight in (True, False):
        config = cfgmod.from_dict({"model": init, "train": {"bn_weight": bn_weight}})
        model = build_model(config.model, config.train, 3)
        record = load_initial_weights(model, config.model, config.train.bn_weight, ["a", "b", "c"])
        loaded = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert len(loaded) == len(norms) > 0
        assert torch.equal(model.backbone.body[0].weight, trained.body[0].weight)
        if bn_weight:
            assert all(torch.equal(a.weight, b.weight) and a.weight.requires_grad for a, b in zip(loaded, norms))
            assert "bn_scales" not in record
        else:
            assert all(torch.all(m.weight == 1) and not m.weight.requires_grad for m in loaded)
            assert all(torch.equal(a.bias, b.bias) for a, b in zip(loaded, norms))  # only the scales change
            assert "set to 1" in record["bn_scales"]


# ---------------------------------------------------------------- model.init files that are damaged (issue 21)


def _init_file(tmp_path, state):
    path = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    config = cfgmod.from_dict({"model": {"name": "fastnet", "width": 4, "init": str(path)}})
    return config, build_model(config.model, config.train, 3)


def _ccn_layout(head: dict) -> dict:
    torch.manual_seed(0)
    return {**{f"backbone.{k}": v for k, v in FastNet(width=4).state_dict().items()},
            **{f"head.flat.{k}": v for k, v in head.items()}}


W, B = torch.randn(3, FastNet(width=4).num_features), torch.randn(3)


@pytest.mark.parametrize("head, message", [
    ({"bias": B}, "its flat head has no weight"),
    ({"weight": torch.tensor(1.0), "bias": B}, r"weight is \(\) and bias \(3,\)"),
    ({"weight": W.to(torch.int8), "bias": B}, "holds int8 values, not floating-point"),
    ({"weight": W.to(torch.complex64), "bias": B}, "holds complex64 values"),
], ids=["only-bias", "0-d-weight", "int8-head", "complex-head"])
def test_a_damaged_flat_head_in_model_init_is_one_line(tmp_path, head, message):
    config, model = _init_file(tmp_path, _ccn_layout(head))
    with pytest.raises(CCNError, match=message) as err:
        load_initial_weights(model, config.model, config.train.bn_weight, ["a", "b", "c"])
    assert "is damaged" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("dtype", [torch.int8, torch.complex64])
def test_model_init_backbone_of_integer_or_complex_values_is_refused(tmp_path, dtype):
    state = _ccn_layout({"weight": W, "bias": B})
    state["backbone.body.0.weight"] = state["backbone.body.0.weight"].to(dtype)
    config, model = _init_file(tmp_path, state)
    with pytest.raises(CCNError, match=f"body.0.weight holds {str(dtype)[6:]} values, not floating-point"):
        load_initial_weights(model, config.model, config.train.bn_weight, ["a", "b", "c"])


def test_model_init_with_nan_weights_is_refused_naming_the_tensor(tmp_path):
    state = _ccn_layout({"weight": W, "bias": B})
    state["head.flat.bias"] = torch.tensor([0.0, float("nan"), 1.0])
    config, model = _init_file(tmp_path, state)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CCNError, match=r"NaN or infinite weights \(head.flat.bias\).*finite weights"):
        load_initial_weights(model, config.model, config.train.bn_weight, ["a", "b", "c"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded


def test_a_bare_file_whose_classifier_reads_other_features_says_so(tmp_path):
    torch.manual_seed(0)
    trained = FastNet(width=4)
    wide = torch.nn.Linear(trained.num_features + 5, 3)
    config, model = _init_file(tmp_path, {**trained.state_dict(), "fc.weight": wide.weight.detach(),
                                          "fc.bias": wide.bias.detach()})
    record = load_initial_weights(model, config.model, config.train.bn_weight, ["a", "b", "c"])
    assert not record["flat_head"]
    assert record["flat_head_fresh_because"] == (f"its flat head reads {trained.num_features + 5} features, "
                                                 f"this backbone gives {trained.num_features}")


def test_a_run_folder_with_nan_weights_is_refused_by_predict_evaluate_export(runs, tmp_path, images):
    import shutil
    run = tmp_path / "nan-run"
    shutil.copytree(runs["flat"], run)
    state = load_file(str(run / "model.safetensors"))
    name = next(k for k in state if k.startswith("head.flat.weight"))
    state[name][0, 0] = float("nan")
    save_file(state, str(run / "model.safetensors"))
    for argv in (["predict", str(run), images[0], "--json"], ["evaluate", str(run)],
                 ["export", str(run), "--out", str(tmp_path / "m.onnx")]):
        result = run_cli(*argv)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, (argv, result.stderr)
        assert f"holds NaN or infinite weights ({name})" in result.stderr, argv
    assert not (tmp_path / "m.onnx").exists()
