"""Damaged or hand-edited files ccn reads back, and bad grids: each case of docs/bad-input.md
("Files ccn reads back", "Grid files", "Command line") ends in one CCNError line that names the
file and what is wrong - never a traceback, never a silently wrong result."""

import io
import json
import shutil
import struct

import pytest
import torch

from ccn.checkpoint import read_training_state
from ccn.errors import CCNError, ConfigError
from ccn.grid import load_grid
from ccn.hierarchy import Hierarchy
from ccn.runfiles import read_results
from ccn.runs import load_run
from ccn.tracking import RunLog
from conftest import edit_json, run_cli


@pytest.fixture
def run(damaged_run):
    return damaged_run


def _before_the_digest(results):
    """results.json as a run saved before the config digest wrote it: format 0, no config_sha256."""
    del results["format"], results["config_sha256"]


def _one_line(err, *words):
    message = str(err.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message


# ---------------------------------------------------------------- results.json

def _set(key, value):
    return lambda d: d.__setitem__(key, value)


RESULTS_CASES = [
    pytest.param(b"{\"top1\": 0.5,", "is not valid JSON", id="results-truncated"),
    pytest.param(b"\xff\xfe{}", "is not UTF-8 text", id="results-not-utf8"),
    pytest.param(b"[" * 50_000 + b"]" * 50_000, "nested too deeply", id="results-deep-nesting"),
    pytest.param(b"[1, 2]", "the file must be a mapping", id="results-not-a-mapping"),
    pytest.param(_set("top1", float("nan")), "is not valid JSON (NaN is not a number JSON allows", id="results-nan"),
    pytest.param(_set("top1", "high"), "'top1' must be a finite number, got 'high'", id="results-top1-text"),
    pytest.param(_set("top1", 3.5), "'top1' must be at most 1", id="results-top1-above-one"),
    pytest.param(lambda d: d.pop("num_classes"), "lacks 'num_classes'", id="results-missing-key"),
    pytest.param(_set("num_classes", 10**12), "'num_classes' must be at most", id="results-huge-class-count"),
    pytest.param(lambda d: d["classes"].__setitem__(1, d["classes"][0]), "'classes' names", id="results-class-twice"),
    pytest.param(lambda d: d["per_class_top1"].pop(), "'per_class_top1' must have 6 entries",
                 id="results-per-class-length"),
    pytest.param(lambda d: d["preprocess"].__setitem__("std", [0, 0.2, 0.2]), "'preprocess'.std[0] must be",
                 id="results-zero-std"),
    pytest.param(_set("rule", "vote"), "'rule' is 'vote', which is not in 'rules'", id="results-unknown-rule"),
]


@pytest.mark.parametrize("damage, words", RESULTS_CASES)
def test_damaged_results_json(damage, words, run):
    path = run / "results.json"
    path.write_bytes(damage) if isinstance(damage, bytes) else edit_json(path, damage)
    with pytest.raises(CCNError) as err:
        read_results(run)
    _one_line(err, str(path), words)


# ---------------------------------------------------------------- hierarchy.json

def _groups(change):
    def edit(d):
        d.pop("tree")
        change(d["groups"], d["classes"])
    return edit


HIERARCHY_CASES = [
    pytest.param(_groups(lambda g, c: g[1].append(g[0][0])), "is in groups 1 and 2", id="hierarchy-class-in-two-groups"),
    pytest.param(_groups(lambda g, c: max(g, key=len).pop()), "are in no group", id="hierarchy-class-in-no-group"),
    pytest.param(_groups(lambda g, c: g[0].append("zebra")), "names 'zebra', which is not in 'classes'",
                 id="hierarchy-unknown-class"),
    pytest.param(lambda d: d["classes"].__setitem__(1, d["classes"][0]), "'classes' names", id="hierarchy-class-name-twice"),
    pytest.param(_groups(lambda g, c: g.append([])), "must not be empty", id="hierarchy-empty-group"),
    pytest.param(lambda d: d["tree"].reverse(), "'groups' and 'tree' do not hold the same", id="hierarchy-tree-disagrees"),
    pytest.param(lambda d: d.__setitem__("classes", ["only"]), "at least 2 classes", id="hierarchy-one-class"),
    pytest.param(lambda d: (d.pop("format"), d.__setitem__("distances", [[0.0] * 6] * 5)),
                 "'distances' must have 6 entries",
                 id="hierarchy-distances-shape"),  # a format-0 hierarchy.json held distances before distances.npy
    pytest.param(lambda d: d["merges"][0].__setitem__(0, -7.0), "'merges' is not a valid merge tree",
                 id="hierarchy-merges-invalid"),
    pytest.param(lambda d: d["how"].__setitem__("coarse_ari", "high"), "'how'.coarse_ari must be a finite number",
                 id="hierarchy-coarse-ari-text"),
    pytest.param(lambda d: d.__setitem__("tree", [[[["g0_c0"]]]]), "must be a list of class names",
                 id="hierarchy-nested-too-deep"),
    pytest.param(b'{"classes": ["a", "b"], "groups": [["a", "b"]', "is not valid JSON", id="hierarchy-truncated"),
]


@pytest.mark.parametrize("damage, words", HIERARCHY_CASES)
def test_damaged_hierarchy_json(damage, words, run):
    path = run / "hierarchy.json"
    path.write_bytes(damage) if isinstance(damage, bytes) else edit_json(path, damage)
    with pytest.raises(CCNError) as err:
        Hierarchy.load(path)
    _one_line(err, str(path), words)


def test_run_files_that_disagree(run):
    """hierarchy.json of other classes, or missing in a ccn run: load_run says which files disagree."""
    edit_json(run / "hierarchy.json", lambda d: d.__setitem__("classes", [c + "x" for c in d["classes"]]) or
               d.__setitem__("groups", [[c + "x" for c in g] for g in d["groups"]]) or d.pop("tree"))
    with pytest.raises(CCNError) as err:
        load_run(run)
    _one_line(err, "hierarchy.json and results.json name different classes")
    (run / "hierarchy.json").unlink()
    with pytest.raises(CCNError) as err:
        load_run(run)
    _one_line(err, "says method.name=ccn but", "has no hierarchy.json")


def _set_preprocess(run, **facts):
    edit_json(run / "results.json", lambda d: d["preprocess"].update(facts))


def test_preprocess_that_disagrees_with_the_config(run):
    """results.json "preprocess" says how predict and export shape an image file; one that says another
    size or crop than config.yaml would score resized images silently."""
    edit_json(run / "results.json", _before_the_digest)  # a run saved before the config digest
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("image_size: null", "image_size: 16"))
    load_run(run)  # the tiny run's images are 16 px: config and results agree
    _set_preprocess(run, image_size=24)
    with pytest.raises(CCNError) as err:
        load_run(run)
    _one_line(err, "results.json and config.yaml disagree on the images' stored side (24 and 16)")
    _set_preprocess(run, image_size=16, input_size=12, eval_crop=0.75)
    with pytest.raises(CCNError) as err:
        load_run(run)
    _one_line(err, "disagree on the images' evaluation crop ((12, 0.75) and None)")


def test_evaluate_refuses_native_images_of_another_side(run):
    """With a native-size data set (config image_size null) only the loaded images can tell the side."""
    _set_preprocess(run, image_size=24)
    load_run(run)
    _clean_exit_2(run_cli("evaluate", str(run)), "has images of side 16", "learned images of side 24")


def test_edited_config_yaml_of_a_run_names_the_file(run):
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("lr: 0.05", "lr: .nan"))
    with pytest.raises(ConfigError) as err:
        load_run(run)
    _one_line(err, str(run / "config.yaml"), "train.lr must be a finite number")


def test_truncated_weights(run):
    path = run / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CCNError) as err:
        load_run(run)
    _one_line(err, "cannot read weights", "missing or damaged")


# ---------------------------------------------------------------- saved runs read back (session 9)

def _move_one_class(d):
    """hierarchy.json with the first class of the largest group moved to another group."""
    big = max(range(len(d["groups"])), key=lambda k: len(d["groups"][k]))
    moved = d["groups"][big].pop(0)
    d["groups"][(big + 1) % len(d["groups"])].append(moved)
    d["tree"] = [list(g) for g in d["groups"]]


def test_groups_edited_in_hierarchy_json_are_refused(run, capsys):
    """hierarchy.json names the groups (clusters, predict, the export sidecar); the weights' head.group_of
    and head.mask decide the probabilities: groups edited in one of them printed groups the net does not use."""
    from ccn.cli import main
    assert main(["clusters", str(run)]) == 0
    capsys.readouterr()
    edit_json(run / "hierarchy.json", _move_one_class)
    Hierarchy.load(run / "hierarchy.json")  # a valid hierarchy on its own
    with pytest.raises(CCNError) as err:
        load_run(run)
    _one_line(err, f"{run / 'hierarchy.json'} and {run / 'model.safetensors'} hold different groups",
              "head.group_of", "restore both files")
    assert main(["clusters", str(run)]) == 2
    assert "hold different groups" in capsys.readouterr().err


def test_weights_of_another_partition_are_refused(run):
    """model.safetensors copied from another run with as many groups: its head.group_of differs."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    path = run / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        state, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    group_of = state["head.group_of"].clone()
    big = int(torch.bincount(group_of).argmax())
    first = int((group_of == big).nonzero()[0])
    group_of[first] = (big + 1) % int(group_of.max() + 1)
    state["head.group_of"] = group_of
    save_file(state, str(path), metadata)
    with pytest.raises(CCNError) as err:
        load_run(run)
    _one_line(err, "hold different groups", "head.group_of")


def test_set_on_a_saved_run_takes_only_where_and_how_fast(run):
    """`ccn evaluate RUN --set train.bn_eps=0.1` scored 0.917 where the run scored 0.875; --set
    data.val_fraction=0.5 scored training images as 'test': a saved run is scored as it trained."""
    for item in ("train.bn_eps=0.1", "data.val_fraction=0.5", "data.test_per_class=1", "data.train_per_class=3",
                 "method.probe_set=holdout", "data.image_size=32", "model.width=8"):
        with pytest.raises(CCNError) as err:
            load_run(run, [item])
        key = item.split("=")[0]
        _one_line(err, f"--set {key}: a saved run is scored as it trained", "data.root, data.store",
                  "train.tta, method.inference", f"to change {key}, train a new run")
    config, *_ = load_run(run, ["train.eval_batch_size=7", "device=cpu", "data.cache=false", "method.inference=hard",
                                "train.tta=none"])
    assert (config.train.eval_batch_size, config.device, config.method.inference) == (7, "cpu", "hard")


def test_config_yaml_edited_after_training_is_refused(run):
    """predict and export follow config.yaml's train.tta, train.bn_eps, method.inference ...: a hand edit
    after training changed the probabilities silently. Comments and where/how-fast keys may change."""
    path = run / "config.yaml"
    original = path.read_text()
    load_run(run)
    path.write_text("# a comment\n" + original.replace("cache: true", "cache: false").replace("device: auto",
                                                                                           "device: cpu"))
    load_run(run)  # the digest is of the values, and leaves out where and how fast
    for before, after in (("bn_eps: null", "bn_eps: 0.1"), ("tta: none", "tta: mirror"),
                          ("inference: soft", "inference: hard"), ("val_fraction: 0.0", "val_fraction: 0.5")):
        assert before in original, before
        path.write_text(original.replace(before, after))
        with pytest.raises(CCNError) as err:
            load_run(run)
        _one_line(err, f"{path} is not the config that trained the run", "config_sha256",
                  "restore the config the run wrote")
    edit_json(run / "results.json", _before_the_digest)
    load_run(run)  # runs saved before the digest existed are not checked


def test_the_config_digest_is_of_the_recorded_keys_so_a_key_added_later_refuses_no_run(run):
    """An older ccn wrote config.yaml without a key today's Config has (its default applies): the
    digest is over the file's own values, so that run still loads; a digest of today's resolved Config
    would have refused every run saved before any new key."""
    from ccn.config import read_yaml
    from ccn.runs import config_digest
    path = run / "config.yaml"
    older = "\n".join(line for line in path.read_text().splitlines() if not line.strip().startswith("bn_eps:"))
    path.write_text(older + "\n")
    edit_json(run / "results.json", lambda d: d.__setitem__("config_sha256", config_digest(read_yaml(path))))
    config, *_ = load_run(run)
    assert config.train.bn_eps is None  # the default of the key the file lacks


@pytest.fixture(scope="module")
def val_run(tmp_path_factory):
    """The tiny run trained with data.val_fraction=0.5: scored on half of its training images."""
    from ccn import config as cfgmod
    from ccn.pipeline import run_training
    from ccn.runs import NewRun
    from conftest import TINY_RUN
    out = tmp_path_factory.mktemp("val") / "run"
    config = cfgmod.load(None, [*TINY_RUN, "data.val_fraction=0.5", "method.name=flat"])
    with NewRun(out) as new:
        run_training(config, out, RunLog(out, stream=io.StringIO()), on_start=lambda: new.start(config))
    return out


def test_evaluate_names_the_set_it_scores(run, val_run, tmp_path, capsys):
    """evaluate printed "test_images": 18 for a run scored on its validation split and nothing said so."""
    from ccn.cli import main
    for folder, eval_set, count in ((run, "test", 12), (val_run, "validation", 18)):
        assert main(["evaluate", str(folder)]) == 0
        scored = json.loads(capsys.readouterr().out)
        saved = json.loads((folder / "results.json").read_text())
        assert (scored["eval_set"], scored["test_images"], scored["tta"]) == (eval_set, count, "none")
        assert (saved["eval_set"], saved["test_images"]) == (eval_set, count)
        assert scored["top1"] == pytest.approx(saved["top1"], abs=1e-6)
    old = tmp_path / "old"  # saved before the config digest, its config.yaml then given a validation split
    shutil.copytree(run, old)
    edit_json(old / "results.json", _before_the_digest)
    (old / "config.yaml").write_text((old / "config.yaml").read_text().replace("val_fraction: 0.0",
                                                                                 "val_fraction: 0.5"))
    assert main(["evaluate", str(old)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the run was scored on its test images but its config.yaml now selects the " \
        "validation images (data.val_fraction): restore the config the run wrote" in err, err


# ---------------------------------------------------------------- checkpoint header

def _state(change):
    def edit(header):
        state = json.loads(header["__metadata__"]["ccn_state"])
        change(state)
        header["__metadata__"]["ccn_state"] = json.dumps(state)
    return edit


def _rewrite_header(path, edit):
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    edit(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + size:])


CHECKPOINT_CASES = [
    pytest.param(_state(lambda s: s.__setitem__("seconds", float("nan"))), "NaN is not a number JSON allows",
                 id="checkpoint-nan-seconds"),
    pytest.param(_state(lambda s: s.pop("optimizer")), "lacks 'optimizer'", id="checkpoint-missing-optimizer"),
    pytest.param(_state(lambda s: s["optimizer"]["param_groups"][0].__setitem__("lr", -1)), ".lr must be 0 or more",
                 id="checkpoint-negative-lr"),
    pytest.param(lambda h: h["__metadata__"].pop("ccn_state"), "has no ccn training state", id="checkpoint-no-state"),
    pytest.param(lambda h: h["__metadata__"].__setitem__("ccn_state", "{"), "is not valid JSON",
                 id="checkpoint-state-not-json"),
    pytest.param(lambda h: h.__setitem__("rng.other", h.pop("rng.torch")), "'rng.torch'", id="checkpoint-missing-rng"),
    pytest.param(lambda h: h["rng.torch"].__setitem__("shape", [10**12]), "cannot read checkpoint",
                 id="checkpoint-tensor-shape-edited"),
    pytest.param(None, "cannot read checkpoint", id="checkpoint-truncated"),
]


@pytest.mark.parametrize("edit, words", CHECKPOINT_CASES)
def test_damaged_checkpoint(edit, words, run):
    path = run / "checkpoint.safetensors"
    if edit is None:
        path.write_bytes(path.read_bytes()[:1000])
    else:
        _rewrite_header(path, edit)
    with pytest.raises(CCNError) as err:
        read_training_state(path)
    _one_line(err, str(path), words)


@pytest.fixture
def resumable(run):
    """A MethodRun of the tiny run's config whose resume() reads run/checkpoint.safetensors."""
    from ccn import config as cfgmod
    from ccn.dist import World
    from ccn.pipeline import MethodRun
    return MethodRun(cfgmod.load(run / "config.yaml"), run, RunLog(None, stream=io.StringIO()), World(), None)


@pytest.mark.parametrize("change, words", [
    pytest.param(lambda s: s.__setitem__("epoch", "two"), "'epoch' must be a whole number", id="checkpoint-epoch-text"),
    pytest.param(lambda s: s.__setitem__("stage", "warp"), "'stage' must be one of", id="checkpoint-unknown-stage"),
    pytest.param(lambda s: s.__setitem__("epoch", 9), "after the run's last epoch", id="checkpoint-epoch-beyond-run"),
    pytest.param(lambda s: s.__setitem__("stage", "probe"), "at stage 'probe' but has groups", id="checkpoint-stage-and-groups"),
    pytest.param(lambda s: s["hierarchy"]["groups"][0].append(s["hierarchy"]["groups"][1][0]) or s["hierarchy"].pop("tree"),
                 "the hierarchy in checkpoint", id="checkpoint-bad-partition"),
    pytest.param(lambda s: s["optimizer"]["param_groups"][0].__setitem__("params", [0]), "does not fit this run",
                 id="checkpoint-optimizer-of-another-model"),
])
def test_checkpoint_that_does_not_fit_the_run(change, words, run, resumable):
    _rewrite_header(run / "checkpoint.safetensors", _state(change))
    with pytest.raises(CCNError) as err:
        resumable.resume()
    _one_line(err, words)


# ---------------------------------------------------------------- metrics.jsonl

def test_torn_and_damaged_metrics_lines_are_dropped_on_resume(run):
    path = run / "metrics.jsonl"
    rows = path.read_text().splitlines()
    path.write_bytes(("\n".join([rows[0], "\xff garbage", "[1, 2]", rows[1][:20]])).encode("utf-8", "surrogateescape"))
    out = io.StringIO()
    RunLog(run, stream=out).truncate(2)
    assert path.read_text().splitlines() == [rows[0]]
    assert "dropped 3 damaged line(s)" in out.getvalue()


# ---------------------------------------------------------------- grid files

GRID = "base: {data: {name: synthetic, num_classes: 6, num_groups: 2}, train: {epochs: 3}}\n"
GRID_CASES = [
    pytest.param(GRID + "variants: []\n", "variants is empty", id="grid-empty-variants"),
    pytest.param(GRID + "variants: {}\n", "variants is empty", id="grid-empty-variant-mapping"),
    pytest.param(GRID + "variants: {flat: , wide: 5}\n", "variant 'wide': its overrides must be a mapping",
                 id="grid-overrides-not-mapping"),
    pytest.param(GRID + "variants: [1, 2]\n", "variants must be a list of distinct names", id="grid-numeric-variant-names"),
    pytest.param(GRID + "variants: [flat, ccn, flat]\n", "variants must be a list of distinct names",
                 id="grid-repeated-variant"),
    pytest.param(GRID + "seeds: [true, false]\n", "seeds must be a list", id="grid-bool-seeds"),
    pytest.param(GRID + "seeds: [-1, 0]\n", "from 0 to 4294967295", id="grid-negative-seed"),
    pytest.param(GRID + f"seeds: {list(range(1001))}\n", "seeds must be a list of 1 to 1000", id="grid-too-many-seeds"),
    pytest.param("base: 5\n", "base must be a mapping", id="grid-base-not-mapping"),
    pytest.param(GRID + "reference: [flat]\n", "reference variant ['flat'] is not in", id="grid-reference-not-text"),
    pytest.param(GRID + "seeds: [0]\nseeds: [1]\n", "key 'seeds' appears twice", id="grid-duplicate-key"),
    pytest.param(GRID + "variants: {g: {method: {groups: 2, threshold: 0.3}}, flat: }\n",
                 "variant 'g': method.groups and method.threshold cannot both be set", id="grid-variant-silent-override"),
]


@pytest.mark.parametrize("text, words", GRID_CASES)
def test_bad_grid_files(text, words, tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_grid(path)
    _one_line(err, words)


def test_damaged_grid_yaml_in_an_experiment_folder(tmp_path):
    from ccn.experiment import _claim_folder
    path = tmp_path / "g.yaml"
    path.write_text(GRID + "variants: [flat, ccn]\nseeds: [0]\n")
    grid = load_grid(path)
    (tmp_path / "exp").mkdir()  # run_grid makes and locks the folder before it claims it
    _claim_folder(tmp_path / "exp", grid)
    saved = tmp_path / "exp" / "grid.yaml"
    for damage in (b"base: {data: [\n", b"\x00\x01binary"):
        saved.write_bytes(damage)
        with pytest.raises(CCNError) as err:
            _claim_folder(tmp_path / "exp", grid)
        _one_line(err, str(saved), "is damaged", "restore it")
        assert saved.read_bytes() == damage  # the user's file is left as it was


# ---------------------------------------------------------------- command line (few: each costs a process)

def _clean_exit_2(result, *words):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.mark.parametrize("top", [pytest.param("0", id="predict-top-0"), pytest.param("-1", id="predict-top-negative")])
def test_predict_top_must_be_positive(top, run, tmp_path):
    from PIL import Image
    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    _clean_exit_2(run_cli("predict", str(run), str(tmp_path / "x.png"), "--top", top), f"--top {top}", "1 or more")


def test_cli_damaged_files_are_one_line(run, tmp_path):
    """The same readers through the command line: config, results.json, hierarchy.json, checkpoint."""
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"train: {epochs: 3}\ntrain: {epochs: 4}\n")
    _clean_exit_2(run_cli("train", "--config", str(bad), "--out", str(tmp_path / "r")), "appears twice")
    assert not (tmp_path / "r").exists()
    (run / "hierarchy.json").write_text('{"classes": ["a", "a"], "groups": [["a"]]}')
    _clean_exit_2(run_cli("clusters", str(run)), "hierarchy.json", "'classes' names 'a' twice")
    (run / "results.json").write_text("[]")
    _clean_exit_2(run_cli("evaluate", str(run)), "results.json", "must be a mapping")
    (run / "results.json").unlink()
    _rewrite_header(run / "checkpoint.safetensors", _state(lambda s: s.__setitem__("step", -5)))
    _clean_exit_2(run_cli("train", "--resume", str(run)), "checkpoint", "'step' must be 0 or more")


def test_results_of_another_run_in_a_grid_folder(tiny_run, tmp_path):
    """A results.json copied in from elsewhere (other rules or classes) is named, not averaged in."""
    from types import SimpleNamespace

    from ccn.report import summarise
    for seed in (0, 1):
        shutil.copytree(tiny_run, tmp_path / "runs" / f"ccn-s{seed}")
    edit_json(tmp_path / "runs" / "ccn-s1" / "results.json", lambda d: d["rules"].pop("blend"))
    grid = SimpleNamespace(variants={"ccn": {}}, seeds=[0, 1], reference="ccn")
    with pytest.raises(CCNError) as err:
        summarise(grid, tmp_path)
    _one_line(err, str(tmp_path / "runs" / "ccn-s1" / "results.json"), "not this grid's run")


@pytest.mark.parametrize("extra, words", [
    pytest.param(["data.train_per_class=30"], "the training loss became nan in epoch 1", id="nan-loss-in-epoch-1"),
    pytest.param([], "the network's outputs are not finite after epoch 1, so classes cannot be grouped",
                 id="non-finite-outputs-at-clustering"),
])
def test_diverging_run_stops_with_one_line(extra, words, tmp_path):
    """lr=1e30: the loss turns nan in epoch 1, or (one step per epoch) the loss stays finite but the
    outputs overflow before clustering. Before any checkpoint exists, none is claimed to be kept."""
    from ccn import config as cfgmod
    from ccn.pipeline import run_training
    from conftest import TINY_RUN
    config = cfgmod.load(None, [*TINY_RUN, "train.lr=1e30", *extra])
    with pytest.raises(CCNError) as err:
        run_training(config, tmp_path, RunLog(tmp_path, stream=io.StringIO()))
    _one_line(err, words, "lower train.lr")
    assert "checkpoint" not in str(err.value) and not (tmp_path / "checkpoint.safetensors").exists()


# ---------------------------------------------------------------- method.groups_file

CHAIN = {"nodes": [{"id": i} for i in range(5000)] + [{"id": "x", "label": "a"}, {"id": "y", "label": "b"}],
         "links": [{"source": i, "target": i + 1} for i in range(4999)]
         + [{"source": 4999, "target": "x"}, {"source": 4999, "target": "y"}]}


@pytest.mark.parametrize("content, words", [
    pytest.param('{"groups": ' + "[" * 100_000 + "]" * 100_000 + "}", "is not readable JSON",
                 id="groups-file-deep-nesting"),
    pytest.param(json.dumps(CHAIN), "nested too deeply", id="groups-file-deep-chain"),
    pytest.param(json.dumps({"groups": [["a", "b"], [], ["c"]]}), "has a group with no class in it",
                 id="groups-file-empty-group"),
    pytest.param(json.dumps({"tree": [["a", ["b", []]], ["c"]]}), "has a group with no class in it",
                 id="groups-file-empty-sub-group"),
    pytest.param(b'{"groups": [["a\xff"]]}', "is not UTF-8 text", id="groups-file-not-utf8"),
    pytest.param('{"groups": [["a", "b"], ["c", NaN]]}', "NaN is not a number JSON allows", id="groups-file-nan"),
])
def test_bad_groups_file(content, words, tmp_path):
    from ccn.hierarchy import read_groups_file
    path = tmp_path / "groups.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    classes = ["a", "b"] if content == json.dumps(CHAIN) else ["a", "b", "c"]
    with pytest.raises(CCNError) as err:
        read_groups_file(path, classes, whole_tree=True)
    _one_line(err, "method.groups_file", str(path), words)
