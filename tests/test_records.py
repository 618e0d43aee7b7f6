"""Records with a format number (ccn.records): what today's ccn writes carries `format`, a file of a
newer format is refused in one line, and a file without one (format 0: written before formats, or in
an older layout) is upgraded by one step per format and still loads, resumes and continues."""

import io
import json

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ccn import records
from ccn.checkpoint import read_training_state
from ccn.errors import CCNError
from ccn.experiment import _claim_folder
from ccn.grid import load_grid
from ccn.hierarchy import Hierarchy
from ccn.runfiles import STATE_FILE, read_results
from ccn.runs import load_run
from conftest import edit_json, run_cli


@pytest.fixture
def run(damaged_run):
    return damaged_run


def _metadata(path):
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def _rewrite_header(path, change_meta, change_tensors=lambda t: t):
    """Rewrite a safetensors file with its metadata (and tensors) changed, as another ccn could have."""
    meta, tensors = _metadata(path), load_file(str(path))
    save_file(change_tensors(tensors), str(path), metadata=change_meta(dict(meta)))


def _one_line(err, *words):
    message = str(err.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message


def _grid_file(folder, **extra):
    path = folder / "g.yaml"
    path.write_text(yaml.safe_dump({**extra, "base": {"data": {"name": "synthetic", "num_classes": 4}},
                                    "variants": ["flat"], "seeds": [0]}, sort_keys=False))
    return path


# ---------------------------------------------------------------- what today's ccn writes


def test_every_record_a_run_writes_carries_todays_format(tiny_run):
    assert json.loads((tiny_run / "results.json").read_text())["format"] == 1
    assert json.loads((tiny_run / "hierarchy.json").read_text())["format"] == 1
    assert _metadata(tiny_run / "model.safetensors")["format"] == "1"  # safetensors metadata is text
    meta = _metadata(tiny_run / STATE_FILE)
    assert meta["format"] == "1"
    state = json.loads(meta[records.STATE])
    assert state["batch"] == 0 and state["hierarchy"]["format"] == 1  # the groups it holds are a record too
    # the readers hand back today's layout without the number: it belongs to the file, not its content
    assert "format" not in read_results(tiny_run) and "format" not in read_training_state(tiny_run / STATE_FILE)[1]


def test_stamp_puts_the_number_first_and_read_record_applies_one_step_per_format(monkeypatch):
    assert list(records.stamp("results", {"top1": 0.5, "format": 7})) == ["format", "top1"]
    assert records.stamp("weights", {"model": "resnet9"}) == {"format": "1", "model": "resnet9"}
    seen = []
    kind = records.Kind("test file", (lambda d: seen.append(0) or {**d, "a": 1},
                                      lambda d: seen.append(1) or {**d, "b": d["a"] + 1}))
    monkeypatch.setitem(records.KINDS, "test", kind)
    assert records.read_record("test", {"x": 0}, "fix it", "f") == {"x": 0, "a": 1, "b": 2} and seen == [0, 1]
    seen.clear()
    assert records.read_record("test", {"format": 1, "a": 5}, "fix it", "f") == {"a": 5, "b": 6} and seen == [1]
    assert records.read_record("test", {"format": 2, "z": 1}, "fix it", "f") == {"z": 1}


def test_other_text_in_a_weights_files_format_is_format_0():
    """Other tools write "format": "pt" into safetensors metadata, and ccn wrote "ccn-1" before formats."""
    for text in ("pt", "ccn-1", None):
        header = records.header_record({} if text is None else {"format": text}, {"head.paths": 1, "w": 2})
        meta, tensors = records.split_header(records.read_record("weights", header, "fix", "f"))
        assert tensors == {"w": 2} and "format" not in meta  # the step of format 0 ran


# ---------------------------------------------------------------- files from before formats still load


def test_a_run_written_before_formats_loads_as_it_did(run):
    """Today's run with every `format` deleted (and the weights' old "ccn-1" label) is a run of format 0."""
    before = load_run(run)[3]
    edit_json(run / "results.json", lambda d: d.pop("format"))
    edit_json(run / "hierarchy.json", lambda d: d.pop("format"))
    _rewrite_header(run / "model.safetensors", lambda m: {**m, "format": "ccn-1"})
    config, model, hierarchy, results = load_run(run)
    assert results == before and hierarchy.how["num_groups"] == 2
    for name, tensor in load_file(str(run / "model.safetensors")).items():
        assert torch.equal(model.state_dict()[name], tensor)


def test_results_in_the_oldest_layout_read_with_what_they_did_not_record(run):
    """Before eval_set (and data.val_fraction, which came with it) every run scored its test images;
    a digest or class names a run did not record are None: not checked."""
    from ccn.report import _facts

    unrecorded = ("config_sha256", "classes", "code", "torch", "finished")
    edit_json(run / "results.json", lambda d: [d.pop(k) for k in ("format", "eval_set", *unrecorded)])
    results = read_results(run)
    assert results["eval_set"] == "test" and all(results[key] is None for key in unrecorded)
    load_run(run)  # the classes checked by count, the config not by digest
    facts = _facts({"flat": [results]})  # a grid's report says what the run did not record
    assert facts["torch"] == "unknown" and facts["date"] == "1 run(s) without a recorded date"
    edit_json(run / "results.json", lambda d: d.__setitem__("format", 1))
    with pytest.raises(CCNError) as err:  # today's format always records them: one missing is damage
        read_results(run)
    _one_line(err, "results.json", "lacks 'classes', 'eval_set', 'config_sha256'")


def test_a_hierarchy_in_the_old_layout_reads_its_count_and_distances(run):
    """Format 0 named the group count how.groups (before issue 21) and kept the C x C distances in
    the JSON (before distances.npy): the step of format 0 renames the one and condenses the other."""
    saved = Hierarchy.load(run / "hierarchy.json").with_distances(run)
    matrix = torch.zeros(6, 6)
    rows, cols = torch.triu_indices(6, 6, 1)
    matrix[rows, cols] = torch.from_numpy(saved.distances)
    matrix = matrix + matrix.T

    def age(d):
        del d["format"]
        d["how"]["groups"] = d["how"].pop("num_groups")
        d["distances"] = matrix.tolist()
    edit_json(run / "hierarchy.json", age)
    (run / "distances.npy").unlink()
    old = Hierarchy.load(run / "hierarchy.json")
    assert old.how["num_groups"] == 2 and "groups" not in old.how and old.groups == saved.groups
    assert old.with_distances(run).distances.tolist() == saved.distances.tolist()


def test_a_checkpoint_written_before_formats_resumes(run):
    """A checkpoint of format 0: no number, no 'batch' after a whole epoch, no image counts, data
    digest, code or model.init record, and a tree head's old dense path matrix: the run resumes and
    finishes with the weights it saved."""
    from ccn.pipeline import run_training
    from ccn.runs import resumed_run
    from ccn.tracking import RunLog

    def age(meta):
        state = json.loads(meta.pop(records.STATE))
        for key in ("batch", "images", "data_digest", "code", "init"):
            del state[key]
        return {records.STATE: json.dumps(state)}
    saved = load_file(str(run / STATE_FILE))
    _rewrite_header(run / STATE_FILE, age, lambda t: {**t, "model.head.paths": torch.ones(3, 6)})
    (run / "results.json").unlink()  # interrupted after its last epoch's checkpoint
    with resumed_run(run) as config:
        results = run_training(config, run, RunLog(run, stream=io.StringIO()), resume=True)
    assert results["code_at_start"] == "not recorded"
    weights = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(weights[k[len("model."):]], v) for k, v in saved.items() if k.startswith("model."))


def test_an_experiment_folder_whose_grid_yaml_has_no_format_continues(tmp_path):
    grid = load_grid(_grid_file(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    _claim_folder(out, grid, log=lambda line: None)
    text = (out / "grid.yaml").read_text()
    assert text.startswith("format: 1\n")
    assert load_grid(out / "grid.yaml").raw == grid.raw  # the folder's copy is a grid file too
    (out / "grid.yaml").write_text(text.removeprefix("format: 1\n"))  # as ccn wrote it before formats
    assert _claim_folder(out, grid, log=lambda line: None) is None
    assert (out / "grid.yaml").read_text() == text


@pytest.mark.parametrize("key, value, words", [
    ("torch", 5, "'torch' must be non-empty text"),
    ("finished", ["2026-12-06"], "'finished' must be non-empty text"),
    ("code", "abc", "'code' must be a mapping"),
])
def test_what_results_json_records_of_its_provenance_is_checked(run, key, value, words):
    """Format 1 always records the code, torch version and time; a report reads them (a number as the
    torch version raised TypeError while the grid's report was written)."""
    edit_json(run / "results.json", lambda d: d.__setitem__(key, value))
    with pytest.raises(CCNError) as err:
        read_results(run)
    _one_line(err, str(run / "results.json"), words)


# ---------------------------------------------------------------- newer formats are refused


NEWER = ("format 99, newer than format 1, the newest this ccn", "reads: upgrade ccn to read it")


@pytest.mark.parametrize("value, words", [
    (99, (" is a results file of ",) + NEWER),
    ("1", ("'format' must be a whole number, got '1'",)),
    (-1, ("'format' must be 0 or more",)),
], ids=["newer", "text", "negative"])
def test_a_results_file_of_a_newer_format_is_refused(run, value, words):
    edit_json(run / "results.json", lambda d: d.__setitem__("format", value))
    with pytest.raises(CCNError) as err:
        load_run(run)
    _one_line(err, str(run / "results.json"), *words)


def test_evaluate_refuses_a_newer_run_in_one_line(run):
    edit_json(run / "results.json", lambda d: d.__setitem__("format", 99))
    result = run_cli("evaluate", str(run))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("ccn: error: ") and result.stderr.count("\n") == 1
    assert "upgrade ccn" in result.stderr


def test_a_hierarchy_file_of_a_newer_format_is_refused(run):
    edit_json(run / "hierarchy.json", lambda d: d.__setitem__("format", 99))
    with pytest.raises(CCNError) as err:
        Hierarchy.load(run / "hierarchy.json")
    _one_line(err, str(run / "hierarchy.json"), " is a hierarchy file of ", *NEWER)
    result = run_cli("clusters", str(run))
    assert result.returncode == 2 and "upgrade ccn" in result.stderr and "Traceback" not in result.stderr


def test_a_groups_file_of_a_newer_format_is_refused(run):
    from ccn.hierarchy import read_groups_file

    edit_json(run / "hierarchy.json", lambda d: d.__setitem__("format", 99))
    classes = json.loads((run / "hierarchy.json").read_text())["classes"]
    with pytest.raises(CCNError) as err:
        read_groups_file(run / "hierarchy.json", classes, whole_tree=False)
    _one_line(err, "method.groups_file=", *NEWER)


def test_weights_of_a_newer_format_are_refused(run):
    _rewrite_header(run / "model.safetensors", lambda m: {**m, "format": "99"})
    with pytest.raises(CCNError) as err:
        load_run(run)
    _one_line(err, f"weights {run / 'model.safetensors'}", " is a weights file of ", *NEWER)
    from ccn.checkpoint import load_weights, save_weights  # a flat run's weights: read by load_weights alone
    layer = torch.nn.Linear(3, 2)
    save_weights(layer, run / "flat.safetensors")
    _rewrite_header(run / "flat.safetensors", lambda m: {**m, "format": "99"})
    with pytest.raises(CCNError) as err:
        load_weights(torch.nn.Linear(3, 2), run / "flat.safetensors")
    _one_line(err, f"weights {run / 'flat.safetensors'}", *NEWER)


def test_model_init_refuses_newer_weights_and_takes_other_tools_files(run):
    """model.init takes any safetensors file ("format": "pt" is another tool's word, not a ccn format),
    but a ccn weights file of a newer format is refused like any other reader's."""
    from ccn import config as cfgmod
    from ccn.model_init import load_initial_weights
    from ccn.network import build_model
    from conftest import TINY_RUN

    classes = read_results(run)["classes"]
    config = cfgmod.load(None, [*TINY_RUN, "method.name=flat", f"model.init={run}"])
    initial = lambda c: load_initial_weights(build_model(c.model, c.train, 6), c.model, c.train.bn_weight, classes)  # noqa: E731
    assert initial(config)["layout"] == "ccn"
    _rewrite_header(run / "model.safetensors", lambda m: {**m, "format": "99"})
    with pytest.raises(CCNError) as err:
        initial(config)
    _one_line(err, f"model.init={run / 'model.safetensors'}", *NEWER)
    bare = {k: v.contiguous() for k, v in build_model(config.model, config.train, 6).backbone.state_dict().items()}
    save_file(bare, str(run / "timm.safetensors"), metadata={"format": "pt"})
    config = cfgmod.load(None, [*TINY_RUN, "method.name=flat", f"model.init={run / 'timm.safetensors'}"])
    assert initial(config)["layout"] == "bare backbone"


def test_a_checkpoint_of_a_newer_format_is_refused(run):
    _rewrite_header(run / STATE_FILE, lambda m: {**m, "format": "99"})
    with pytest.raises(CCNError) as err:
        read_training_state(run / STATE_FILE)
    _one_line(err, f"checkpoint {run / STATE_FILE}", " is a checkpoint of ", *NEWER)
    (run / "results.json").unlink()
    result = run_cli("train", "--resume", str(run))
    assert result.returncode == 2 and "upgrade ccn" in result.stderr and "Traceback" not in result.stderr


def test_a_checkpoint_of_a_newer_format_is_refused_before_its_state_is_read(run):
    """A newer ccn may keep its training state in another layout than JSON text: the checkpoint is
    named as newer (upgrade ccn), not as damaged (whose fix, deleting it, would lose the run's epochs)."""
    _rewrite_header(run / STATE_FILE, lambda m: {**m, "format": "99", records.STATE: "zstd:KLUv/QBYAQ"})
    with pytest.raises(CCNError) as err:
        read_training_state(run / STATE_FILE)
    _one_line(err, f"checkpoint {run / STATE_FILE}", " is a checkpoint of ", *NEWER)
    assert "delete it" not in str(err.value)


def test_a_grid_of_a_newer_format_is_refused(tmp_path):
    with pytest.raises(CCNError) as err:
        load_grid(_grid_file(tmp_path, format=99))
    _one_line(err, f"grid file {tmp_path / 'g.yaml'}", " is a grid file of ", *NEWER)
    grid = load_grid(_grid_file(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    (out / "grid.yaml").write_text(yaml.safe_dump({"format": 99, **grid.raw}, sort_keys=False))
    with pytest.raises(CCNError) as err:  # before any run of the folder is trained or reused
        _claim_folder(out, grid, log=lambda line: None)
    _one_line(err, str(out / "grid.yaml"), *NEWER)


# ---------------------------------------------------------------- a format-0 run that names no classes


@pytest.fixture
def unnamed_flat_run(tmp_path):
    """A finished flat run (no hierarchy.json to take the names from) whose results.json is format 0
    without 'classes': read_results gives classes None."""
    from ccn.pipeline import run_training
    from ccn.runs import NewRun
    from ccn.tracking import RunLog
    from ccn import config as cfgmod
    from conftest import TINY_RUN

    out = tmp_path / "flat"
    config = cfgmod.load(None, [*TINY_RUN, "method.name=flat"])
    with NewRun(out) as started:
        run_training(config, out, RunLog(out, stream=io.StringIO()), on_start=lambda: started.start(config))
    edit_json(out / "results.json", lambda r: [r.pop("format"), r.pop("classes")])
    assert read_results(out)["classes"] is None
    return out


def test_a_run_that_names_no_classes_is_refused_by_what_prints_them(unnamed_flat_run, tmp_path):
    """ccn.load and ccn export name the missing class names in one line (they raised TypeError), and
    export writes nothing; ccn predict said so already."""
    import ccn

    with pytest.raises(CCNError) as err:
        ccn.load(unnamed_flat_run)
    _one_line(err, "results.json has no class names")
    out = tmp_path / "m.onnx"
    result = run_cli("export", str(unnamed_flat_run), "--out", str(out))
    assert result.returncode == 2 and "has no class names" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and not (tmp_path / "m.onnx.json").exists()
