"""Hostile inputs of issue 21 (security, hangs, data loss, groups files, tracebacks): planted links
are never written through, groups files that would hang are refused fast, a widened grid keeps the
old one reportable, and every odd path or pipe ends in one line (or quietly)."""

import io
import os
import stat

import pytest

from ccn import config as cfgmod
from ccn.errors import CCNError
from ccn.files import atomic_write
from ccn.locks import LOCK_FILE, FolderLock
from ccn.pipeline import run_training
from ccn.runfiles import RUN_FILES
from ccn.runs import NewRun
from ccn.tracking import RunLog
from conftest import TINY_RUN, run_cli


def _one_line(result, *fragments) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.startswith("ccn: error: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    return result.stderr


# ---------------------------------------------------------------- S1: the run lock and links


@pytest.mark.parametrize("dangling", [False, True], ids=["lock-link-to-file", "lock-link-dangling"])
def test_a_linked_lock_file_is_refused_and_never_written_through(tmp_path, dangling):
    out, victim = tmp_path / "run", tmp_path / "victim.txt"
    out.mkdir()
    if not dangling:
        victim.write_text("keep\n")
    (out / LOCK_FILE).symlink_to(victim)
    with pytest.raises(CCNError, match="is a symbolic link, not a lock file of ccn's: remove it"):
        FolderLock(out, "run folder").acquire()
    assert victim.read_text() == "keep\n" if not dangling else not victim.exists()
    assert os.path.islink(out / LOCK_FILE)  # the user's link is left as it was
    _one_line(run_cli("train", *[a for kv in TINY_RUN for a in ("--set", kv)], "--out", str(out)),
              "symbolic link")
    assert victim.read_text() == "keep\n" if not dangling else not victim.exists()
    assert os.listdir(out) == [LOCK_FILE]  # the refused run wrote nothing


def test_a_hard_linked_or_special_lock_file_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    os.link(victim, out / LOCK_FILE)
    with pytest.raises(CCNError, match="is a hard link to another file"):
        FolderLock(out).acquire()
    assert victim.read_text() == "keep\n"
    (out / LOCK_FILE).unlink()
    os.mkfifo(out / LOCK_FILE)
    with pytest.raises(CCNError, match="is a special file"):
        FolderLock(out).acquire()
    (out / LOCK_FILE).unlink()
    with FolderLock(out):  # a plain folder locks as before, and the lock file goes with the lock
        assert (out / LOCK_FILE).is_file()
    assert not (out / LOCK_FILE).exists()


# ---------------------------------------------------------------- S2: temporary files


def test_links_at_the_old_temporary_names_are_never_written_through(tmp_path):
    """The old temporary names were `.NAME.<pid>.tmp`: links planted there for this process (and its
    neighbours) must stay untouched through a whole run, and every run file is written."""
    out, victim = tmp_path / "run", tmp_path / "victim.txt"
    victim.write_text("keep\n")
    out.mkdir()
    planted = []
    for name in RUN_FILES + ("hierarchy.json",):
        for pid in range(os.getpid() - 2, os.getpid() + 3):
            for pattern in (f".{name}.{pid}.tmp", f"{name}.{pid}.tmp"):
                if not (out / pattern).is_symlink():
                    (out / pattern).symlink_to(victim)
                    planted.append(out / pattern)
    config = cfgmod.load(None, [*TINY_RUN, "method.name=ccn"])
    with NewRun(out) as run:
        run_training(config, out, RunLog(out, stream=io.StringIO()), on_start=lambda: run.start(config))
    assert victim.read_text() == "keep\n"
    assert all(link.is_symlink() for link in planted)
    assert (out / "results.json").is_file() and (out / "config.yaml").is_file()


def test_atomic_write_makes_a_fresh_private_name_and_ordinary_permissions(tmp_path):
    seen = []
    atomic_write(tmp_path / "a.txt", lambda tmp: (seen.append(tmp), tmp.write_text("one")))
    atomic_write(tmp_path / "a.txt", lambda tmp: (seen.append(tmp), tmp.write_text("two")))
    assert seen[0] != seen[1] and all(p.parent == tmp_path and p.name.startswith(".a.txt.") for p in seen)
    assert (tmp_path / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary file left
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask


# ---------------------------------------------------------------- groups files: hangs, tracebacks, shapes

import json  # noqa: E402
import time  # noqa: E402

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from ccn.hierarchy import Hierarchy, read_groups_file  # noqa: E402

CLASSES = ["a", "b", "c", "d", "e", "f"]


def _groups_file(tmp_path, content) -> str:
    path = tmp_path / "groups.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def _doubled_chain(repeat_links: bool) -> dict:
    """The issue's 4 KB file: n0..n39, two links from each to the next (or two parents), n39 -> classes."""
    nodes = [{"id": f"n{i}"} for i in range(40)] + [{"id": c} for c in CLASSES]
    links = []
    for i in range(39):
        links.append({"source": f"n{i}", "target": f"n{i + 1}"})
        if repeat_links or i > 0:  # the second link repeats the first, or comes from the node before (Fibonacci paths)
            links.append({"source": f"n{i}" if repeat_links else f"n{i - 1}", "target": f"n{i + 1}"})
    links += [{"source": "n39", "target": c} for c in CLASSES]
    return {"nodes": nodes, "links": links}


@pytest.mark.parametrize("content, words", [
    pytest.param(_doubled_chain(True), "node 'n1' is linked twice from 'n0'", id="groups-file-repeated-links"),
    pytest.param(_doubled_chain(False), "node 'n2' has two parents, 'n1' and 'n0'", id="groups-file-two-parents"),
    pytest.param({"nodes": [{"id": "r"}] + [{"id": c} for c in CLASSES],
                  "links": [{"source": "r", "target": c} for c in CLASSES] + [{"source": "r", "target": "zz"}]},
                 "link 7's target 'zz' is not in 'nodes'", id="groups-file-link-to-no-node"),
    pytest.param({"nodes": [{"id": [1, 2]}], "links": []}, "node 1's 'id' must be text or a whole number, got [1, 2]",
                 id="groups-file-id-is-a-list"),
    pytest.param({"nodes": [{"label": "a"}], "links": []}, "every node needs an 'id'", id="groups-file-node-no-id"),
    pytest.param({"tree": []}, "'tree' must be a non-empty list of groups", id="groups-file-tree-empty-list"),
    pytest.param({"tree": {}}, "'tree' must be a non-empty list of groups (lists of class names), got {}", id="groups-file-tree-mapping"),
    pytest.param({"tree": 0}, "list of groups (lists of class names), got 0", id="groups-file-tree-number"),
    pytest.param({"groups": [["a", "b", {"c": 1}], ["d", "e", "f"]]}, 'holds {"c": 1} where a class name',
                 id="groups-file-group-holds-a-mapping"),
    pytest.param({"tree": [[["a", ["b", "c"]], "d"], ["e", "f"]]}, "group 1 is split more than once",
                 id="groups-file-depth-3"),
])
def test_groups_files_that_are_no_tree_are_one_line_at_once(content, words, tmp_path):
    path = _groups_file(tmp_path, content)
    started = time.perf_counter()
    with pytest.raises(CCNError) as err:
        read_groups_file(path, CLASSES, whole_tree=True)
    assert time.perf_counter() - started < 1.0  # the doubled chain used to expand 2^39 paths
    message = str(err.value)
    assert "\n" not in message and f"method.groups_file={path}" in message and words in message, message


def test_a_groups_file_naming_300000_unknown_classes_is_refused_fast(tmp_path):
    names = [f"unknown-class-{i}" for i in range(300_000)]
    path = _groups_file(tmp_path, {"groups": [names[:150_000], names[150_000:]]})
    started = time.perf_counter()
    with pytest.raises(CCNError, match="not classes of this data set: unknown-class-0, .*classes missing"):
        read_groups_file(path, CLASSES, whole_tree=False)
    assert time.perf_counter() - started < 5.0  # a hang guard only: list.count made this minutes long


@pytest.mark.parametrize("content", [
    {"groups": [CLASSES]},
    {"nodes": [{"id": "root"}] + [{"id": c} for c in CLASSES], "links": [{"source": "root", "target": c}
                                                                       for c in CLASSES]},
], ids=["one-group", "nbdt-root-holds-the-classes"])
def test_a_one_group_file_is_one_group_not_one_group_per_class(content, tmp_path):
    path = _groups_file(tmp_path, content)
    for whole_tree in (False, True):
        assert read_groups_file(path, CLASSES, whole_tree) == [list(range(6))]


def test_a_one_group_file_trains_one_group(tmp_path):
    """K = 1 end to end: the head has one group, and the run folder reads back with it."""
    from ccn.runs import load_run
    names = [f"g{c % 2}_c{c}" for c in range(6)]  # the synthetic data set's classes
    path = _groups_file(tmp_path, {"groups": [names]})
    out = tmp_path / "run"
    config = cfgmod.load(None, [*TINY_RUN, "method.partition=file", f"method.groups_file={path}"])
    with NewRun(out) as run:
        run_training(config, out, RunLog(out, stream=io.StringIO()), on_start=lambda: run.start(config))
    _, model, hierarchy, _ = load_run(out)
    assert hierarchy.groups == [list(range(6))] and model.head.num_groups == 1


def _trees(leaves):
    """Nested lists over the given leaves, up to four levels, any mix of classes and sub-lists."""
    return st.recursive(leaves, lambda inner: st.lists(inner, min_size=1, max_size=3), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=_trees(st.just(0)), fmt=st.sampled_from(["tree", "groups", "nbdt"]), whole_tree=st.booleans())
def test_every_groups_file_train_accepts_reads_back_from_the_run_folder(shape, fmt, whole_tree, tmp_path):
    """W2: whatever shape read_groups_file accepts, the hierarchy.json a run writes from it is read back
    (Hierarchy.from_json) into the same tree, and a head can be built on it."""
    from ccn.network import make_head
    shape = shape if isinstance(shape, list) else [shape]
    counter = iter(range(1000))
    tree = _relabel(shape, counter)
    classes = [f"c{i}" for i in range(next(counter))]
    if len(classes) < 2:
        return
    named = _map(tree, lambda i: classes[i])
    content = _as_node_link(named) if fmt == "nbdt" else {fmt: named}
    path = _groups_file(tmp_path, content)
    try:
        read = read_groups_file(path, classes, whole_tree)
    except CCNError as err:
        assert "split more than once" in str(err) and whole_tree, err  # the one refusal a well-formed tree may meet
        return
    saved = Hierarchy(classes, read)
    back = Hierarchy.from_json(json.loads(json.dumps(saved.to_json())), "hierarchy.json")
    assert back.tree == read and back.groups == saved.groups
    assert sorted(c for g in back.groups for c in g) == list(range(len(classes)))
    config = cfgmod.load(None, ["method.name=ccn"])
    head = make_head(config.method, 4, len(classes), back)
    assert head is not None


def _relabel(node, counter):
    return [_relabel(child, counter) for child in node] if isinstance(node, list) else next(counter)


def _map(node, fn):
    return [_map(child, fn) for child in node] if isinstance(node, list) else fn(node)


def _as_node_link(tree) -> dict:
    nodes, links = [], []

    def add(node, name):
        nodes.append({"id": name} if isinstance(node, list) else {"id": name, "label": node})
        for i, child in enumerate(node if isinstance(node, list) else []):
            links.append({"source": name, "target": add(child, f"{name}.{i}")})
        return name

    add(tree, "root")
    return {"nodes": nodes, "links": links}


# ---------------------------------------------------------------- experiment folders: D1, W5, wording

import shutil  # noqa: E402

import yaml  # noqa: E402

from ccn.experiment import run_grid  # noqa: E402
from ccn.grid import load_grid  # noqa: E402

TINY_GRID = {"base": {"data": {"name": "synthetic", "num_classes": 6, "num_groups": 2, "train_per_class": 6,
                               "test_per_class": 2},
                      "model": {"width": 4}, "train": {"epochs": 2, "progress": False}},
             "variants": ["flat", "ccn"], "seeds": [0, 1]}


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grid")
    (folder / "g.yaml").write_text(yaml.safe_dump(TINY_GRID))
    run_grid(load_grid(folder / "g.yaml"), folder / "out", log=lambda line: None)
    return folder


def _grid_copy(tiny_grid, tmp_path):
    shutil.copytree(tiny_grid / "out", tmp_path / "out")
    return tmp_path / "out"


def test_a_widening_that_fails_at_start_up_keeps_the_old_grid(tiny_grid, tmp_path):
    out = _grid_copy(tiny_grid, tmp_path)
    before = (out / "grid.yaml").read_text()
    wider = tmp_path / "wider.yaml"
    wider.write_text(yaml.safe_dump({**TINY_GRID, "variants": {
        "flat": None, "ccn": None,
        "mine": {"method": {"name": "ccn", "partition": "file", "groups_file": str(tmp_path / "missing.json")}}}}))
    with pytest.raises(CCNError, match="missing.json is missing"):
        run_grid(load_grid(wider), out, log=lambda line: None)
    assert (out / "grid.yaml").read_text() == before
    lines = []
    summary = run_grid(load_grid(tiny_grid / "g.yaml"), out, log=lines.append)  # the original grid still reports
    assert sum("finished earlier: reused" in line for line in lines) == 4 and set(summary["variants"]) == {"flat", "ccn"}


def test_reordered_seeds_say_nothing_is_added(tiny_grid, tmp_path):
    out = _grid_copy(tiny_grid, tmp_path)
    lines = []
    run_grid(load_grid(tiny_grid / "g.yaml", ["seeds=[1, 0]"]), out, log=lines.append)
    assert any("another order; nothing is added" in line for line in lines), lines
    assert not any("grows by" in line for line in lines)


def test_without_grid_yaml_another_base_config_does_not_reuse_the_old_runs(tiny_grid, tmp_path):
    out = _grid_copy(tiny_grid, tmp_path)
    (out / "grid.yaml").unlink()
    results = (out / "runs" / "flat-s0" / "results.json").read_text()
    with pytest.raises(CCNError, match=r"runs/flat-s0 was trained with another config than this grid gives it "
                                       r"\(train.epochs: 2 there, 3 here\): choose another --out"):
        run_grid(load_grid(tiny_grid / "g.yaml", ["train.epochs=3"]), out, log=lambda line: None)
    assert not (out / "grid.yaml").exists() and (out / "runs" / "flat-s0" / "results.json").read_text() == results
    lines = []  # the grid the runs belong to is still recognised, run by run
    run_grid(load_grid(tiny_grid / "g.yaml"), out, log=lines.append)
    assert sum("finished earlier: reused" in line for line in lines) == 4


# ---------------------------------------------------------------- T8: names too long for the system

import subprocess  # noqa: E402
import sys  # noqa: E402

from ccn.cli import main as cli_main  # noqa: E402

LONG = "x" * 300  # one name over the 255 bytes every file system allows


def _cli_one_line(capsys, argv, *fragments) -> str:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ccn: error: ") and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.parametrize("argv, what", [
    pytest.param(["train", "--out", f"/tmp/{LONG}/run"], "--out", id="long-name-train-out"),
    pytest.param(["train", "--config", f"{LONG}.yaml"], "--config", id="long-name-train-config"),
    pytest.param(["train", "--resume", LONG], "--resume", id="long-name-resume"),
    pytest.param(["train", "--set", f"data.root={LONG}"], "data.root", id="long-name-data-root"),
    pytest.param(["train", "--set", f"model.init={LONG}"], "model.init", id="long-name-model-init"),
    pytest.param(["train", "--set", "method.partition=file", "--set", f"method.groups_file={LONG}.json"],
                 "method.groups_file", id="long-name-groups-file"),
    pytest.param(["predict", LONG, "img.png"], "run folder", id="long-name-predict-run"),
    pytest.param(["predict", "run", "img.png", f"{LONG}.png"], "image", id="long-name-predict-image"),
    pytest.param(["export", "run", "--out", f"{LONG}.onnx"], "--out", id="long-name-export-out"),
    pytest.param(["experiment", "--config", "g.yaml", "--out", LONG], "--out", id="long-name-experiment-out"),
    pytest.param(["clusters", f"runs/{LONG}"], "run folder", id="long-name-clusters-run"),
])
def test_a_name_over_255_bytes_is_one_line_in_every_path(argv, what, capsys):
    _cli_one_line(capsys, argv, what, "bytes long, more than the 255 a file or folder name may have")


def test_a_path_over_4095_bytes_is_one_line(capsys):
    _cli_one_line(capsys, ["train", "--out", "/".join(["y" * 200] * 25)], "--out", "more than the 4095 a path")


# ---------------------------------------------------------------- T9: a reader that stops early


def test_predict_into_a_pipe_closed_early_stops_quietly(tiny_run, tmp_path):
    from PIL import Image
    image = tmp_path / "one.png"
    Image.new("RGB", (8, 8), (200, 30, 30)).save(image)
    err = tmp_path / "stderr.txt"
    command = (f"{sys.executable} -m ccn predict {tiny_run} {' '.join([str(image)] * 1500)} --json 2>{err}; "
               f"echo $? >{tmp_path / 'status'}")
    piped = subprocess.run(["bash", "-c", f"({command}) | head -1"], capture_output=True, text=True)
    assert piped.stdout.startswith('{"path": ') and piped.stdout.count("\n") == 1  # JSON Lines, printed as it goes
    assert err.read_text() == ""  # no BrokenPipeError traceback, no "Exception ignored" line
    assert (tmp_path / "status").read_text().strip() == "141"  # as a Unix tool stopped by SIGPIPE


# ---------------------------------------------------------------- wording


def test_a_fifo_is_named_as_no_regular_file(tiny_run, tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    _cli_one_line(capsys, ["predict", str(tiny_run), str(fifo)], f"image {fifo} is a FIFO, not a regular file")
    _cli_one_line(capsys, ["train", "--config", str(fifo)], f"config file {fifo} is a FIFO, not a regular file")
    from ccn.hierarchy import read_groups_file
    with pytest.raises(CCNError, match=f"method.groups_file={fifo} is a FIFO, not a regular file"):
        read_groups_file(fifo, CLASSES, whole_tree=False)
    from ccn.model_init import init_weights_file
    with pytest.raises(CCNError, match=f"model.init={fifo} is a FIFO, not a regular file"):
        init_weights_file(str(fifo))


def test_export_checks_both_outputs_before_writing_either(tiny_run, tmp_path):
    from ccn.export import export_run
    with pytest.raises(CCNError, match=r"the folder .*missing does not exist: create it"):
        export_run(tiny_run, tmp_path / "missing" / "model.onnx")
    (tmp_path / "dir").mkdir()
    for force in (False, True):  # a folder is a folder, with --force or without: no advice to add --force
        with pytest.raises(CCNError) as err:
            export_run(tiny_run, tmp_path / "dir", force=force)
        assert "is a folder: give a file path such as" in str(err.value) and "--force" not in str(err.value)
    (tmp_path / "model.onnx.json").mkdir()
    with pytest.raises(CCNError, match=r"model.onnx.json \(where --out .* puts its size.*\) is a folder"):
        export_run(tiny_run, tmp_path / "model.onnx", force=True)
    assert not (tmp_path / "model.onnx").exists()  # no model left without its FILE.json


def test_a_write_into_a_missing_folder_names_the_folder(tmp_path):
    from ccn.errors import WriteError
    with pytest.raises(WriteError, match=r"the folder .*gone does not exist: create it") as err:
        atomic_write(tmp_path / "gone" / "x.json", lambda tmp: tmp.write_text("{}"))
    assert "free disk space" not in str(err.value)


def test_model_init_with_non_finite_weights_names_the_file(tiny_run, tmp_path):
    from safetensors.torch import load_file, save_file
    state = load_file(str(tiny_run / "model.safetensors"))
    name = next(k for k in state if k.startswith("backbone.") and state[k].is_floating_point())
    state[name][...] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"))
    config = cfgmod.load(None, [*TINY_RUN, f"model.init={tmp_path / 'nan.safetensors'}"])
    with pytest.raises(CCNError) as err:
        run_training(config, tmp_path / "run", RunLog(tmp_path / "run", stream=io.StringIO()))
    assert "holds NaN or infinite weights" in str(err.value) and name[len('backbone.'):] in str(err.value)
    assert "train.lr" not in str(err.value)


def test_a_link_planted_at_metrics_jsonl_is_never_written_through(tmp_path):
    """A dangling link is not 'a file of an old run', so the folder is not refused as taken: the
    first metrics line must still not create the link's target."""
    from ccn.errors import WriteError
    out, victim = tmp_path / "run", tmp_path / "victim.txt"
    out.mkdir()
    (out / "metrics.jsonl").symlink_to(victim)
    config = cfgmod.load(None, TINY_RUN)
    with pytest.raises(WriteError, match="metrics.jsonl is a symbolic link: ccn does not write through links"):
        with NewRun(out) as run:
            run_training(config, out, RunLog(out, stream=io.StringIO()), on_start=lambda: run.start(config))
    assert not victim.exists()
