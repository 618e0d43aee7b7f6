"""Issue 30 (run folders, data folders and --force): every file ccn reads there is opened as a regular
file with a size limit (a FIFO is named as one, never waited on), --force replaces only a regular file
that belongs to no run, --resume checks the data it continues on, and names ccn prints cannot forge
lines. Commands that could hang run in a child process with a timeout."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ccn.errors import CCNError
from conftest import REPO

HANG_LIMIT_S = int(os.environ.get("CCN_TEST_HANG_LIMIT_S", 60))  # far beyond what a command needs; a FIFO blocks for ever


def ccn(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """`python -m ccn ...` in a child process that is killed (and the test failed) if it blocks."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO / "src")}
    try:
        return subprocess.run([sys.executable, "-m", "ccn", *args], capture_output=True, text=True, cwd=cwd,
                              env=env, timeout=HANG_LIMIT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"ccn {' '.join(args)} blocked for {HANG_LIMIT_S} s")


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def ccn_here(capsys, *args: str) -> Result:
    """`ccn ...` in this process (seconds faster than a child), stopped by SIGALRM if it blocks in Python
    code such as open() on a FIFO. Readers in native code that retry on EINTR (safetensors) use `ccn`."""
    import signal

    from ccn.cli import main

    def blocked(signum, frame):
        raise TimeoutError(f"ccn {' '.join(args)} blocked for {HANG_LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(HANG_LIMIT_S)
    try:
        code = main(list(args))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out = capsys.readouterr()
    return Result(code, out.out, out.err)


def one_line(result, *fragments) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and result.stderr.startswith("ccn: error: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    return result.stderr


def copy_run(tiny_run, tmp_path, name="run"):
    run = tmp_path / name
    shutil.copytree(tiny_run, run)
    return run


def plant(path, kind: str) -> None:
    """Replace `path` with a FIFO or a folder."""
    if os.path.lexists(path):
        os.unlink(path)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()


def interrupted(tiny_run, tmp_path):
    """A copy of the tiny run as if killed after its last checkpoint: no results.json yet."""
    run = copy_run(tiny_run, tmp_path)
    (run / "results.json").unlink()
    return run


def png(path):
    from PIL import Image
    Image.new("RGB", (8, 8), (120, 30, 200)).save(path)
    return path


# ---------------------------------------------------------------- run-folder files that are FIFOs or folders


def _argv(command: str, run, tmp_path) -> list[str]:
    return {"predict": ["predict", str(run), str(png(tmp_path / "x.png"))],
            "export": ["export", str(run), "--out", str(tmp_path / "m.onnx")],
            "clusters": ["clusters", str(run)], "evaluate": ["evaluate", str(run)]}[command]


@pytest.mark.parametrize("command", ["predict", "export", "clusters"])
def test_a_fifo_at_the_weights_is_named_and_never_waited_on(tiny_run, tmp_path, command):
    run = copy_run(tiny_run, tmp_path)
    plant(run / "model.safetensors", "fifo")
    one_line(ccn(*_argv(command, run, tmp_path)), f"weights {run / 'model.safetensors'} is a FIFO, not a regular file")


@pytest.mark.parametrize("name, command, expected", [
    ("hierarchy.json", "clusters", "hierarchy file {path} is a FIFO, not a regular file"),
    ("hierarchy.json", "predict", "hierarchy file {path} is a FIFO, not a regular file"),
    ("results.json", "predict", "results file {path} is a FIFO, not a regular file"),
    ("results.json", "export", "results file {path} is a FIFO, not a regular file"),
    ("results.json", "evaluate", "results file {path} is a FIFO, not a regular file"),
    ("config.yaml", "predict", "config file {path} is a FIFO, not a regular file"),
])
def test_a_fifo_in_a_run_folder_is_named_and_never_waited_on(tiny_run, tmp_path, capsys, name, command, expected):
    run = copy_run(tiny_run, tmp_path)
    plant(run / name, "fifo")
    one_line(ccn_here(capsys, *_argv(command, run, tmp_path)), expected.format(path=run / name))


@pytest.mark.parametrize("name, command", [("hierarchy.json", "clusters"), ("results.json", "predict"),
                                           ("results.json", "export")])
def test_a_folder_where_a_run_file_belongs_is_named_not_missing(tiny_run, tmp_path, capsys, name, command):
    from ccn.cli import main
    run = copy_run(tiny_run, tmp_path)
    plant(run / name, "folder")
    argv = {"clusters": ["clusters", str(run)], "predict": ["predict", str(run), str(png(tmp_path / "x.png"))],
            "export": ["export", str(run), "--out", str(tmp_path / "m.onnx")]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{run / name} is a folder" in err and "has no" not in err and len(err.strip().splitlines()) == 1, err


def test_a_fifo_at_the_checkpoint_stops_resume_in_one_line(tiny_run, tmp_path):
    run = interrupted(tiny_run, tmp_path)
    plant(run / "checkpoint.safetensors", "fifo")
    one_line(ccn("train", "--resume", str(run)),
             f"checkpoint {run / 'checkpoint.safetensors'} is a FIFO, not a regular file")
    assert not (run / "results.json").exists()


@pytest.mark.parametrize("name, expected", [
    ("results.json", "results file {path} is a FIFO, not a regular file"),
    ("config.yaml", "config file {path} is a FIFO, not a regular file"),
    ("metrics.jsonl", "metrics log {path} is a FIFO, not a regular file"),
])
def test_a_fifo_in_an_interrupted_run_stops_resume_in_one_line(tiny_run, tmp_path, capsys, name, expected):
    run = interrupted(tiny_run, tmp_path)
    plant(run / name, "fifo")
    one_line(ccn_here(capsys, "train", "--resume", str(run)), expected.format(path=run / name))
    assert not (run / "results.json").is_file()  # nothing finished behind the refusal (nor "nothing to resume")


def test_a_dangling_checkpoint_link_is_refused_not_taken_for_no_checkpoint(tiny_run, tmp_path, capsys):
    run = interrupted(tiny_run, tmp_path)
    (run / "checkpoint.safetensors").unlink()
    (run / "checkpoint.safetensors").symlink_to(tmp_path / "gone.safetensors")
    metrics = (run / "metrics.jsonl").read_text()
    one_line(ccn_here(capsys, "train", "--resume", str(run)), "checkpoint", "does not exist")
    assert (run / "metrics.jsonl").read_text() == metrics  # the log was not cut back to epoch 0


def test_a_fifo_as_model_init_weights_of_a_run_folder_is_named(tiny_run, tmp_path):
    from ccn import config as cfgmod
    from ccn.model_init import load_initial_weights
    from ccn.network import build_model
    run = copy_run(tiny_run, tmp_path)
    plant(run / "model.safetensors", "fifo")
    config = cfgmod.load(run / "config.yaml", [f"model.init={run}"])
    with pytest.raises(CCNError, match="is a FIFO, not a regular file"):
        load_initial_weights(build_model(config.model, config.train, 6), config.model, config.train.bn_weight,
                             [f"c{i}" for i in range(6)])


# ---------------------------------------------------------------- distances.npy


def _npy_with_header(path, shape_text: str, data: bytes = b"\0" * 64):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }" % shape_text
    header += " " * (118 - len(header)) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + data)


@pytest.mark.parametrize("kind, expected", [
    ("npz", "is not a readable .npy array"),
    ("huge-shape", "shape (100000000000000000000,), not the 15 distances"),
    ("bool-shape", "declares the shape (True, True, True), which is not a list of sizes"),
    ("expression-shape", "is not a readable .npy array"),
    ("short", "is cut short"),
    ("objects", "is not a readable .npy array (it holds pickled Python objects"),
    ("fifo", "distances file {path} is a FIFO, not a regular file"),
    ("folder", "distances file {path} is a folder"),
])
def test_a_damaged_distances_file_is_one_line_for_clusters_plot(tiny_run, tmp_path, capsys, kind, expected):
    run = copy_run(tiny_run, tmp_path)
    path = run / "distances.npy"
    path.unlink()
    if kind == "npz":
        with open(path, "wb") as handle:
            np.savez(handle, distances=np.ones(15, dtype=np.float32))
    elif kind == "huge-shape":
        _npy_with_header(path, "(100000000000000000000,)")
    elif kind == "bool-shape":
        _npy_with_header(path, "(True, True, True)")
    elif kind == "expression-shape":
        _npy_with_header(path, "(10**20,)")
    elif kind == "short":
        _npy_with_header(path, "(15,)", b"\0" * 20)
    elif kind == "objects":
        header = "{'descr': '|O', 'fortran_order': False, 'shape': (15,), }"
        path.write_bytes(b"\x93NUMPY\x01\x00" + (len(header) + 1).to_bytes(2, "little") + header.encode() + b"\n")
    else:
        plant(path, kind)
    one_line(ccn_here(capsys, "clusters", str(run), "--plot"), expected.format(path=path))
    assert not (run / "distances.png").exists()


# ---------------------------------------------------------------- --force replaces only the user's regular files


@pytest.mark.parametrize("out_name, hit", [
    ("results", "results.json"),  # FILE.json over the other run's results.json
    ("model.safetensors", "model.safetensors"),
    ("config.yaml", "config.yaml"),
    ("dendrogram.png", "dendrogram.png"),
])
def test_export_force_never_replaces_another_runs_files(tiny_run, tmp_path, capsys, out_name, hit):
    other = copy_run(tiny_run, tmp_path, "other")
    before = {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()}
    (other / "dendrogram.png").write_bytes(b"figure")
    before["dendrogram.png"] = b"figure"
    one_line(ccn_here(capsys, "export", str(tiny_run), "--out", str(other / out_name), "--force"),
             f"which belongs to the run in {other.resolve()}")
    assert {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()} == before


def test_export_never_writes_a_run_file_into_an_interrupted_run(tiny_run, tmp_path, capsys):
    other = interrupted(tiny_run, tmp_path)  # results.json absent: writing one would make the run look finished
    one_line(ccn_here(capsys, "export", str(tiny_run), "--out", str(other / "results")), "belongs to the run in")
    assert not (other / "results.json").exists() and not (other / "results").exists()


def test_export_force_never_replaces_an_experiments_files(tiny_run, tmp_path, capsys):
    grid = tmp_path / "grid"
    grid.mkdir()
    (grid / "grid.yaml").write_text("name: g\n")
    (grid / "summary.json").write_text("{}")
    one_line(ccn_here(capsys, "export", str(tiny_run), "--out", str(grid / "summary"), "--force"),
             "belongs to the experiment in")
    assert (grid / "summary.json").read_text() == "{}" and not (grid / "summary").exists()


def test_export_force_replaces_the_users_own_files(tiny_run, tmp_path, capsys):
    other = copy_run(tiny_run, tmp_path, "other")
    (other / "mine.onnx").write_text("old")  # a new name inside a run folder is the user's
    assert ccn_here(capsys, "export", str(tiny_run), "--out", str(other / "mine.onnx"), "--force").returncode == 0
    assert (other / "mine.onnx").read_bytes() != b"old" and (other / "mine.onnx.json").is_file()


@pytest.mark.parametrize("node", ["fifo", "char-device", "symlink", "socket"])
@pytest.mark.parametrize("which", ["model", "sidecar"])
def test_export_force_never_replaces_a_node_that_is_not_a_regular_file(tiny_run, tmp_path, capsys, node, which):
    import socket
    import stat
    out = tmp_path / "model.onnx"
    target = out if which == "model" else tmp_path / "model.onnx.json"
    if node == "fifo":
        os.mkfifo(target)
    elif node == "char-device":
        try:
            os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers; needs root
        except PermissionError:
            pytest.skip("making a device node needs root")
    elif node == "symlink":
        (tmp_path / "elsewhere").write_text("keep")
        target.symlink_to(tmp_path / "elsewhere")
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(target))
    kind = os.lstat(target).st_mode
    one_line(ccn_here(capsys, "export", str(tiny_run), "--out", str(out), "--force"), "and ccn replaces only regular files")
    assert os.lstat(target).st_mode == kind  # the node is still there, as it was
    other = tmp_path / ("model.onnx.json" if which == "model" else "model.onnx")
    assert not os.path.lexists(other)  # and the other output was not written either


@pytest.mark.parametrize("node", ["fifo", "symlink"])
def test_train_force_removes_only_regular_run_files(tiny_run, tmp_path, capsys, node):
    from conftest import TINY_RUN
    run = copy_run(tiny_run, tmp_path)
    (run / "metrics.jsonl").unlink()
    if node == "fifo":
        os.mkfifo(run / "metrics.jsonl")
    else:
        (tmp_path / "elsewhere.jsonl").write_text("keep\n")
        (run / "metrics.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    args = [a for item in TINY_RUN for a in ("--set", item)]
    one_line(ccn_here(capsys, "train", *args, "--out", str(run), "--force"), "metrics.jsonl", "regular files")
    assert os.path.lexists(run / "metrics.jsonl") and (run / "results.json").is_file()  # the old run is intact


def test_clusters_plot_never_replaces_a_fifo_with_a_figure(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)
    os.mkfifo(run / "dendrogram.png")
    one_line(ccn_here(capsys, "clusters", str(run), "--plot"), "dendrogram.png is a FIFO")
    assert os.path.lexists(run / "dendrogram.png") and not (run / "dendrogram.png").is_file()


# ---------------------------------------------------------------- --resume: the same data, a consistent header


def _colour_folder(root, classes=("c1", "c2", "c3"), per_class=4):
    """train/ and test/ with the same file names in every class, each class its own colour."""
    from PIL import Image
    for split, count in (("train", per_class), ("test", 2)):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), (80 * k, 255 - 80 * k, 17 * i)).save(folder / f"img{i}.png")
    return root


FOLDER_RUN = ["data.name=folder", "data.image_size=8", "model.width=4", "train.epochs=2", "train.progress=false",
              "method.name=flat", "train.batch_size=4"]


def _interrupted_folder_run(tmp_path, capsys):
    data = _colour_folder(tmp_path / "data")
    run = tmp_path / "run"
    args = [a for item in FOLDER_RUN + [f"data.root={data}"] for a in ("--set", item)]
    assert ccn_here(capsys, "train", *args, "--out", str(run)).returncode == 0
    (run / "results.json").unlink()  # killed after its last checkpoint
    return data, run


def test_resume_after_two_class_folders_swapped_is_refused(tmp_path, capsys):
    data, run = _interrupted_folder_run(tmp_path, capsys)
    for split in ("train", "test"):  # the same counts, the same file names: only the labels move
        (data / split / "c1").rename(data / split / "tmp")
        (data / split / "c2").rename(data / split / "c1")
        (data / split / "tmp").rename(data / split / "c2")
    one_line(ccn_here(capsys, "train", "--resume", str(run)), "started on other data", "swapped")
    assert not (run / "results.json").exists()


def test_resume_after_an_image_edited_in_place_is_refused(tmp_path, capsys):
    from PIL import Image
    data, run = _interrupted_folder_run(tmp_path, capsys)
    image = data / "train" / "c3" / "img0.png"
    stat = image.stat()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # `touch -r`: the same time
    one_line(ccn_here(capsys, "train", "--resume", str(run)), "started on other data")


def test_resume_on_the_same_bytes_restored_from_a_copy_finishes(tmp_path, capsys):
    data, run = _interrupted_folder_run(tmp_path, capsys)
    shutil.copytree(data, tmp_path / "backup")  # new inodes and times, the same bytes
    shutil.rmtree(data)
    shutil.copytree(tmp_path / "backup", data)
    result = ccn_here(capsys, "train", "--resume", str(run))
    assert result.returncode == 0, result.stderr
    assert (run / "results.json").is_file()


def _edit_checkpoint(path, **changes):
    """Rewrite the checkpoint's training-state header with `changes` (a hand edit within range)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    state = json.loads(meta["ccn_state"])
    state.update(changes)
    save_file(tensors, str(path), {**meta, "ccn_state": json.dumps(state)})


def _step_checkpoint(tmp_path, batch: int):
    """A run folder whose checkpoint stops after `batch` batches of epoch 2 (step = per_epoch + batch)."""
    import torch

    from ccn import config as cfgmod
    from ccn.dist import World
    from ccn.pipeline import MethodRun
    from ccn.runs import start_run_dir
    from ccn.tracking import RunLog
    from ccn.train import EpochProgress
    from conftest import TINY_RUN
    out = tmp_path / "run"
    out.mkdir()
    config = cfgmod.load(None, TINY_RUN + ["method.name=flat", "train.epochs=3", "train.checkpoint_every=1",
                                          "train.batch_size=4"])
    start_run_dir(out, config)
    run = MethodRun(config, out, RunLog(None, enabled=False), World(), None)
    per_epoch = len(run.data.train)
    run.trainer.step = per_epoch + batch
    run.save_checkpoint(2, EpochProgress(batch, {"loss": torch.tensor(1.0)}, seen=4 * batch), epoch_seconds=1.0)
    return out, config, per_epoch


def _resume(out, config):
    from ccn.dist import World
    from ccn.pipeline import MethodRun
    from ccn.tracking import RunLog
    run = MethodRun(config, out, RunLog(None, enabled=False), World(), None, resume=True)
    run.resume()
    return run


def test_a_consistent_step_checkpoint_resumes(tmp_path):
    out, config, per_epoch = _step_checkpoint(tmp_path, batch=2)
    run = _resume(out, config)
    assert run.trainer.step == per_epoch + 2 and run.first_epoch == 2 and run.resumed_progress.batch == 2


@pytest.mark.parametrize("edit", [{"batch": 1}, {"step": "minus-3"}, {"epoch": 1}, {"batch": 0}],
                         ids=["batch-2-to-1", "step-down-3", "epoch-2-to-1", "batch-2-to-0"])
def test_a_step_checkpoint_edited_within_range_is_refused(tmp_path, edit):
    out, config, per_epoch = _step_checkpoint(tmp_path, batch=2)
    if edit.get("step") == "minus-3":
        edit = {"step": per_epoch + 2 - 3}
    _edit_checkpoint(out / "checkpoint.safetensors", **edit)
    with pytest.raises(CCNError, match="cannot reach step .* it is damaged or edited"):
        _resume(out, config)


def test_an_epoch_checkpoint_with_an_edited_step_is_refused(tiny_run, tmp_path, capsys):
    import json

    from safetensors import safe_open
    run = interrupted(tiny_run, tmp_path)
    with safe_open(str(run / "checkpoint.safetensors"), framework="pt") as handle:
        step = json.loads(handle.metadata()["ccn_state"])["step"]
    _edit_checkpoint(run / "checkpoint.safetensors", step=step - 1)
    one_line(ccn_here(capsys, "train", "--resume", str(run)), "cannot reach step", "damaged or edited")


# ---------------------------------------------------------------- ImageNet label files and validation folders

from test_imagenet import WNIDS, write_imagenet  # noqa: E402  (the tiny ImageNet copies of test_imagenet)


def _kaggle(tmp_path):
    root = write_imagenet(tmp_path / "in", "kaggle")
    return root, root / "ILSVRC" / "Data" / "CLS-LOC" / "val", root / "LOC_val_solution.csv"


def _listing(root):
    from ccn.data.imagenet import list_imagenet
    return list_imagenet(root)


def test_a_val_folder_with_one_wnid_folder_and_loose_images_is_refused(tmp_path):
    from ccn.errors import DataError
    root = write_imagenet(tmp_path / "in", "torchvision")
    val = root / "val"
    for folder in sorted(val.iterdir())[1:]:  # valprep stopped after its first class
        for image in folder.iterdir():
            image.rename(val / image.name)
        folder.rmdir()
    with pytest.raises(DataError, match=r"holds both class folders \(1, e.g. n01440764\) and 6 images outside them"):
        _listing(root)


def test_a_csv_giving_one_image_two_wnids_is_refused(tmp_path):
    from ccn.errors import DataError
    root, _, csv = _kaggle(tmp_path)
    csv.write_text(csv.read_text() + f"ILSVRC2012_val_00000001,{WNIDS[3]} 1 2 3 4\n")
    with pytest.raises(DataError, match=f"labels ILSVRC2012_val_00000001 as {WNIDS[3]}, but an earlier row labels it "
                                        f"{WNIDS[0]}"):
        _listing(root)


def test_a_csv_repeating_a_row_with_the_same_wnid_is_read_once(tmp_path):
    root, _, csv = _kaggle(tmp_path)
    csv.write_text(csv.read_text() + f"ILSVRC2012_val_00000001,{WNIDS[0]} 5 6 7 8\n")
    assert len(_listing(root).val) == 8  # each image once


def test_one_image_id_as_two_files_is_refused(tmp_path):
    from ccn.errors import DataError
    root, val, _ = _kaggle(tmp_path)
    png(val / "ILSVRC2012_val_00000003.png")
    with pytest.raises(DataError, match="ILSVRC2012_val_00000003 is in .* twice .*would be scored twice"):
        _listing(root)


def test_val_images_missing_against_the_csv_are_counted_and_refused(tmp_path):
    from ccn.errors import DataError
    root, val, csv = _kaggle(tmp_path)
    (val / "ILSVRC2012_val_00000002.JPEG").unlink()
    (val / "ILSVRC2012_val_00000007.JPEG").unlink()
    with pytest.raises(DataError, match=r"lacks 2 of the 8 validation images .* \(e.g. ILSVRC2012_val_00000002\)"):
        _listing(root)
    lines = [line for line in csv.read_text().splitlines() if "_00000002," not in line and "_00000007," not in line]
    csv.write_text("\n".join(lines) + "\n")  # a subset chosen on purpose
    assert len(_listing(root).val) == 6


@pytest.mark.parametrize("ending", ["\r", "\r\n"], ids=["cr-only", "crlf"])
def test_a_csv_with_other_line_endings_is_read(tmp_path, ending):
    root, _, csv = _kaggle(tmp_path)
    csv.write_bytes(csv.read_text().replace("\n", ending).encode())
    assert [label for _, label in _listing(root).val] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_a_csv_field_over_the_csv_limit_is_one_line(tmp_path):
    from ccn.errors import DataError
    root, _, csv = _kaggle(tmp_path)
    csv.write_text(csv.read_text() + 'ILSVRC2012_val_00000009,"' + "n" * 140_000 + '"\n')
    with pytest.raises(DataError, match="line 10 is not a CSV row ImageNet has .*field larger than field limit"):
        _listing(root)


@pytest.mark.parametrize("which", ["synsets", "csv"])
def test_a_utf8_byte_order_mark_is_accepted(tmp_path, which):
    root, _, csv = _kaggle(tmp_path)
    path = root / "LOC_synset_mapping.txt" if which == "synsets" else csv
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    listing = _listing(root)
    assert listing.wnids == WNIDS and listing.names[0] == "tench" and len(listing.val) == 8


@pytest.mark.parametrize("which, kind", [("synsets", "fifo"), ("csv", "fifo"), ("synsets", "folder")])
def test_an_imagenet_label_file_that_is_not_a_file_is_named(tmp_path, which, kind):
    from ccn.errors import DataError
    root, _, csv = _kaggle(tmp_path)
    path = root / "LOC_synset_mapping.txt" if which == "synsets" else csv
    plant(path, kind)
    with pytest.raises(DataError, match=f"{path} is a {'FIFO, not a regular file' if kind == 'fifo' else 'folder'}"):
        _listing(root)


# ---------------------------------------------------------------- Caltech-101's split lists


def _caltech(tmp_path, train_lines, test_lines=None):
    base = tmp_path / "caltech" / "101_ObjectCategories"
    for name in ("cat", "dog"):
        (base / name).mkdir(parents=True)
        for i in range(3):
            png(base / name / f"image_{i:04d}.png")
    for name, lines in (("train.txt", train_lines), ("test.txt", test_lines)):
        if isinstance(lines, bytes):
            (base.parent / name).write_bytes(lines)
        elif lines is not None:
            (base.parent / name).write_text("".join(line + "\n" for line in lines))
    return base


def _split(base):
    from ccn.data.folder import caltech_split, list_class_files
    return caltech_split(base, list_class_files(base))


TRAIN = ["cat/image_0000.png", "cat/image_0001.png", "dog/image_0000.png", "dog/image_0001.png"]
TEST = ["cat/image_0002.png", "dog/image_0002.png"]


def test_split_lists_are_read(tmp_path):
    base = _caltech(tmp_path, TRAIN, TEST)
    train, test = _split(base)
    assert [p.relative_to(base).as_posix() for p in train] == TRAIN and len(test) == 2


@pytest.mark.parametrize("train, test, message", [
    (TRAIN, TEST + ["cat/image_0001.png"], r"both name 1 image\(s\) \(e.g. cat/image_0001.png\): a run would train on"),
    (TRAIN + ["cat/image_0000.png"], TEST, "names cat/image_0000.png twice"),
    (TRAIN, None, "is there but .*test.txt is not"),
    (TRAIN + ["../../../etc/passwd"], TEST, "names '../../../etc/passwd', which is not inside"),
    (TRAIN + ["/etc/passwd"], TEST, "names '/etc/passwd', which is not inside"),
    (b"cat/image_0000.png\ncaf\xe9/x.png\n", TEST, "is not UTF-8 text"),
], ids=["overlap", "repeated", "one-list-only", "dot-dot", "absolute", "not-utf8"])
def test_bad_split_lists_are_one_line(tmp_path, train, test, message):
    from ccn.errors import DataError
    base = _caltech(tmp_path, train, test)
    with pytest.raises(DataError, match=message):
        _split(base)


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_split_list_that_is_not_a_file_is_named_not_missing(tmp_path, kind):
    from ccn.errors import DataError
    base = _caltech(tmp_path, TRAIN, TEST)
    plant(base.parent / "train.txt", kind)
    with pytest.raises(DataError, match=f"train.txt is a {'FIFO, not a regular file' if kind == 'fifo' else 'folder'}"):
        _split(base)


# ---------------------------------------------------------------- names ccn prints


EVIL = "c1 99.0%\nevil.png: cat"


def test_a_class_name_cannot_forge_a_line_of_predict_or_clusters_output(tmp_path, capsys):
    data = _colour_folder(tmp_path / "data", classes=(EVIL, "c2\x1b[2J", "c3"))
    run = tmp_path / "run"
    settings = [s for s in FOLDER_RUN if s != "method.name=flat"] + [f"data.root={data}", "method.groups=2"]
    args = [a for item in settings for a in ("--set", item)]
    assert ccn_here(capsys, "train", *args, "--out", str(run)).returncode == 0
    images = [str(png(tmp_path / f"x{i}.png")) for i in range(2)]
    out = ccn_here(capsys, "predict", str(run), *images, "--top", "3").stdout
    assert len(out.splitlines()) == 2 and "\x1b" not in out, out  # one line per image, whatever the names
    assert "c1 99.0%\\nevil.png: cat" in out and "c2\\x1b[2J" in out
    out = ccn_here(capsys, "clusters", str(run)).stdout
    assert "\x1b" not in out and "\nevil.png" not in out and "c1 99.0%\\nevil.png: cat" in out, out


def test_an_error_naming_a_path_with_a_newline_stays_one_line(tmp_path, capsys):
    run = tmp_path / "a\nccn: error: forged"
    one_line(ccn_here(capsys, "predict", str(run), str(png(tmp_path / "x.png"))), "a\\nccn: error: forged")


def test_a_file_name_that_is_not_utf8_prints_escaped(tiny_run, tmp_path, capsys):
    image = png(tmp_path / os.fsdecode(b"caf\xe9.png"))
    result = ccn_here(capsys, "predict", str(tiny_run), str(image))
    assert result.returncode == 0 and "caf\\xe9.png: " in result.stdout, result.stderr


# ---------------------------------------------------------------- method.top_k too small for the groups


def test_a_top_k_below_twice_the_mean_group_is_refused_before_training(tmp_path, capsys):
    from conftest import TINY_RUN
    settings = TINY_RUN + ["method.sparse_above=2", "method.top_k=2", "method.groups=2"]  # 6 classes: groups of 3
    args = [a for item in settings for a in ("--set", item)]
    one_line(ccn_here(capsys, "train", *args, "--out", str(tmp_path / "run")),
             "method.top_k=2 keeps fewer profile entries than twice the 3 classes", "set method.top_k to 6 or more")
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before anything was trained or written


def test_a_top_k_below_twice_the_largest_group_formed_is_refused():
    import torch

    from ccn.errors import ConfigError
    from ccn.hierarchy.partition import build_hierarchy
    torch.manual_seed(0)
    profiles = torch.softmax(torch.randn(8, 8) * 3, dim=1)
    with pytest.raises(ConfigError, match=r"method.top_k=2 keeps fewer .* the largest group formed has .* of each "
                                          r"profile's mass dropped\)"):
        build_hierarchy(profiles, [f"c{i}" for i in range(8)], threshold=10.0, sparse_above=2, top_k=2)
    hierarchy = build_hierarchy(profiles, [f"c{i}" for i in range(8)], num_groups=2, sparse_above=2)  # default top_k
    assert len(hierarchy.groups) == 2


def test_train_force_with_a_linked_tensorboard_folder_keeps_the_old_run(tiny_run, tmp_path, capsys):
    from conftest import TINY_RUN
    run = copy_run(tiny_run, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep")
    (run / "tensorboard").symlink_to(elsewhere)
    args = [a for item in TINY_RUN for a in ("--set", item)]
    one_line(ccn_here(capsys, "train", *args, "--out", str(run), "--force"), "tensorboard", "not a folder of its own")
    assert (run / "results.json").is_file() and (run / "model.safetensors").is_file()  # not half-removed
    assert (elsewhere / "precious").read_text() == "keep"


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_cifar_batch_that_is_not_a_file_is_named(tmp_path, kind):
    from test_data import write_cifar10

    from ccn.config import DataConfig
    from ccn.data import load_dataset
    from ccn.errors import DataError
    folder = write_cifar10(tmp_path)
    plant(folder / "data_batch_3", kind)
    with pytest.raises(DataError, match=f"CIFAR file .*data_batch_3 is a {'FIFO, not a regular file' if kind == 'fifo' else 'folder'}"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))


# ---------------------------------------------------------------- block readers: a read that would wait

def _within_hang_limit(call):
    """call()'s result or what it raised; TimeoutError (by SIGALRM) if it waits past HANG_LIMIT_S."""
    import signal

    def blocked(signum, frame):
        raise TimeoutError(f"still reading after {HANG_LIMIT_S} s: it waits")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(HANG_LIMIT_S)
    try:
        return call()
    except Exception as err:  # noqa: BLE001 - the test inspects what was raised
        return err
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def waiting_file(tmp_path, monkeypatch):
    """A file the kernel calls regular but whose read waits for data, as /proc/kmsg's does (which a test
    cannot rely on: as root it has messages to give): a FIFO with a writer that writes nothing, which
    ccn.files is told is a regular file, so that the stat checks let it through to the read."""
    from ccn import files
    fifo = tmp_path / "waits.png"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that the writer's open does not wait
    writer = os.open(fifo, os.O_WRONLY)
    monkeypatch.setattr(files, "node_problem", lambda mode: "")
    yield fifo
    os.close(writer)
    os.close(reader)


def _stream_dataset(path):
    """The parts of an ImageDataset that ccn.data.digest reads, its training image a streamed file."""
    from types import SimpleNamespace

    import torch
    return SimpleNamespace(classes=["a"], class_ids=["a"], train_images=SimpleNamespace(paths=[str(path)]),
                           train_labels=torch.zeros(1, dtype=torch.int64),
                           test_images=torch.zeros((0, 3, 8, 8), dtype=torch.uint8), test_labels=torch.zeros(0))


@pytest.mark.parametrize("reading", ["read(n)", "read()", "readinto", "lines"])
def test_every_read_of_a_regular_file_handle_refuses_a_read_that_would_wait(waiting_file, reading):
    """open_regular's handle itself refuses (not only read_regular_bytes), so readers in blocks are covered."""
    from ccn.files import UnsafeFile, open_regular
    reads = {"read(n)": lambda handle: handle.read(1 << 20), "read()": lambda handle: handle.read(),
             "readinto": lambda handle: handle.readinto(bytearray(16)), "lines": lambda handle: list(handle)}

    def read():
        with open_regular(waiting_file, None, "image") as handle:
            return reads[reading](handle)
    err = _within_hang_limit(read)
    assert isinstance(err, UnsafeFile), err
    assert str(err) == f"image {waiting_file} cannot be read without waiting (it is not a file of data)"


def test_the_cifar_md5_check_refuses_a_file_that_would_wait(waiting_file):
    from ccn.data.cifar import md5sum
    from ccn.errors import DataError
    err = _within_hang_limit(lambda: md5sum(waiting_file))
    assert isinstance(err, DataError), err  # was TypeError from hashlib, given the None a waiting read returns
    assert str(err) == (f"CIFAR archive {waiting_file} cannot be read without waiting (it is not a file of data): "
                        "delete it and download again")


def test_the_data_digest_refuses_a_streamed_file_that_would_wait(waiting_file):
    from ccn.data.digest import data_digest
    err = _within_hang_limit(lambda: data_digest(_stream_dataset(waiting_file)))
    assert isinstance(err, CCNError), err  # was TypeError from hashlib
    assert str(err) == f"image {waiting_file} cannot be read without waiting (it is not a file of data)"


def test_the_block_readers_name_a_fifo_without_a_writer(tmp_path):
    from ccn.data.cifar import md5sum
    from ccn.data.digest import data_digest
    from ccn.errors import DataError
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    err = _within_hang_limit(lambda: md5sum(fifo))
    assert isinstance(err, DataError) and "is a FIFO, not a regular file: delete it and download again" in str(err)
    err = _within_hang_limit(lambda: data_digest(_stream_dataset(fifo)))
    assert isinstance(err, CCNError) and str(err) == f"image {fifo} is a FIFO, not a regular file"


def test_the_block_readers_still_read_a_regular_file(tmp_path):
    import hashlib

    from ccn.data.cifar import md5sum
    from ccn.data.digest import data_digest
    data = tmp_path / "x.png"
    data.write_bytes(bytes(range(256)) * 9000)  # more than one block of the buffered reader
    assert md5sum(data) == hashlib.md5(data.read_bytes()).hexdigest()
    other = tmp_path / "other" / "x.png"
    other.parent.mkdir()
    other.write_bytes(data.read_bytes()[:-1] + b"!")
    assert data_digest(_stream_dataset(data)) != data_digest(_stream_dataset(other))
