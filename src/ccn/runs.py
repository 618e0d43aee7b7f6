"""Run folders: what a run writes, and how a saved run is read back (the files, by name, and
results.json's reader are in ccn.runfiles, which needs no torch).

One process writes a run folder at a time; `ccn train` holds its lock from the first check to the
end, and with --force removes the old run only once the new one has loaded its data and model.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import torch

from ccn import config as cfgmod
from ccn.checkpoint import check_weights_file, load_weights, save_weights
from ccn.files import TEMPORARY_NAME, atomic_write, check_replaceable, fault_point, regular_file_size, write_json
from ccn.config import Config
from ccn.data import input_size, stored_size
from ccn.data.prepare import eval_transform
from ccn.errors import CCNError
from ccn.hierarchy import Hierarchy
from ccn.hierarchy.tree import save_distances
from ccn.locks import LOCK_FILE, FolderLock
from ccn.network import build_model, make_head
from ccn.records import header_record, readable_format, stamp
from ccn.runfiles import (DISTANCES_FILE, FIGURES, GRID_FILE, GRID_OUTPUTS, OWN_FILES, RESULTS_FIX, RUN_FILES,
                          read_results)

# `--set` on a saved run (ccn evaluate) may say where its data are and how fast to score them, and choose
# the evaluation options evaluate prints with its scores; any other key would change what the weights
# compute (train.bn_eps) or which images are scored (data.val_fraction scored training images as "test").
WHERE_AND_HOW_FAST = ("data.root", "data.store", "data.workers", "data.worker_timeout", "data.cache", "data.wordnet",
                      "device", "train.eval_batch_size", "train.progress")
EVALUATION_OPTIONS = ("train.tta", "method.inference")
SAVED_RUN_SET_KEYS = WHERE_AND_HOW_FAST + EVALUATION_OPTIONS


def default_run_dir(config: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.data.name}-{config.model.name.replace(':', '_')}-{config.method.name}-s{config.seed}-{stamp}"


def _check_out_path(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise CCNError(f"--out {path} is a file, not a folder: choose another --out")


def _check_writable(path: Path) -> None:
    """Create and remove a file with a name no other process uses, so the test never races another run."""
    probe = path / f".ccn-write-test.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise CCNError(f"cannot write to run folder {path} ({err.strerror or err}): choose a writable --out") from None


def existing_run_files(path: Path) -> list[str]:
    return [name for name in RUN_FILES if (path / name).exists()]  # a dangling link is no run's file


def owner_of(path: Path) -> Optional[str]:
    """What `path` would be part of if ccn wrote it ("the run in B", "the experiment in E"), or None.

    A folder holding any of a run's files (RUN_FILES or its lock) is a run, finished or not; one
    holding grid.yaml an experiment. A file there under a name the run or grid writes is theirs, present
    or not: writing results.json into an interrupted run would make it look finished. Any other name
    in such a folder is the user's."""
    path = Path(path)
    folder = path.parent.resolve()
    if path.name in OWN_FILES and any(os.path.lexists(folder / name) for name in RUN_FILES + (LOCK_FILE,)):
        return f"the run in {folder}"
    if path.name in GRID_OUTPUTS + (GRID_FILE,) and os.path.lexists(folder / GRID_FILE):
        return f"the experiment in {folder}"
    return None


class NewRun:
    """A run folder claimed for a new run: locked, checked, and left untouched until `start`.

    With --force an old run stays in place while the new one loads its data and builds its model;
    `start` replaces it only then. A run that fails before `start` leaves the folder as it was (and
    removes a folder it created), so the same command can be run again."""

    def __init__(self, path: Path, force: bool = False):
        self.path, self.force = Path(path), force
        self.created = not self.path.exists()
        self.lock = FolderLock(self.path, "run folder", fix="choose a writable --out")
        self.started = False

    def __enter__(self) -> "NewRun":
        _check_out_path(self.path)
        _refuse_experiment_folder(self.path)
        try:
            self.lock.acquire()  # before the checks: two processes cannot both see an empty folder
            existing = existing_run_files(self.path)
            if existing and not self.force:
                raise CCNError(f"run folder {self.path} already holds a run ({', '.join(existing)}): choose another "
                               "--out, or add --force to replace it")
            if self.force:
                _check_removable(self.path)
            _check_writable(self.path)
        except BaseException:
            self.__exit__()
            raise
        return self

    def start(self, config: Config) -> None:
        """The new run has loaded its data and model: remove the old run's files, write config.yaml."""
        if self.force:
            remove_run_outputs(self.path)
        start_run_dir(self.path, config)
        self.started = True

    def __exit__(self, *exc) -> None:
        self.lock.release()
        if self.created and not self.started:
            try:
                self.path.rmdir()  # only when empty: nothing of ours or the user's is removed
            except OSError:
                pass


def _check_removable(path: Path) -> None:
    """--force: everything remove_run_outputs removes must be the old run's own regular files (and its
    tensorboard folder a real folder), checked before the first is removed: a FIFO, device or link
    there stops the command with the old run intact, not half-removed."""
    for name in RUN_FILES + FIGURES:
        check_replaceable(path / name, "--force: the old run's", "remove it by hand, or choose another --out")
    board = path / "tensorboard"
    if board.is_symlink() or (os.path.lexists(board) and not board.is_dir()):
        raise CCNError(f"--force: the old run's {board} is not a folder of its own (a link or a file), and ccn removes "
                       "only the run's own tensorboard folder: remove it by hand, or choose another --out")


def _refuse_experiment_folder(path: Path) -> None:
    """An experiment folder holds its grid's grid.yaml, report and runs/: a run written there would
    mix its files with the grid's (ccn experiment refuses a run folder the same way), even with --force.
    Checked before the lock, so nothing at all is written there."""
    if (path / GRID_FILE).exists():
        raise CCNError(f"--out {path} is an experiment folder (it holds {GRID_FILE}), and a run written there would "
                       "mix its files with the grid's: choose another --out (a grid's runs are in its runs/ folder, "
                       "continued with `ccn experiment`)")


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries a killed save of a run file left (`.NAME.<pid>.<random>.tmp` of a name in
    RUN_FILES): only regular files of this user, never a link or folder, and nothing else named .*.tmp."""
    for name in RUN_FILES:
        for stale in path.glob(f".{name}.*.tmp"):
            info = os.lstat(stale) if os.path.lexists(stale) else None
            if (info is not None and stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()
                    and TEMPORARY_NAME.fullmatch(stale.name)):
                stale.unlink(missing_ok=True)  # under torchrun every rank cleans up: another may have been first


def remove_run_outputs(path: Path) -> None:
    """--force: remove this tool's files of the old run; leave anything else the user put there."""
    try:
        for name in RUN_FILES + FIGURES:
            (path / name).unlink(missing_ok=True)
        remove_stale_temporaries(path)
        if (path / "tensorboard").is_dir():
            shutil.rmtree(path / "tensorboard")
    except OSError as err:
        raise CCNError(f"cannot replace the old run in {path} ({err.strerror or err}): remove its files by hand "
                       "or choose another --out") from None


def start_run_dir(path: Path, config: Config) -> None:
    """Write config.yaml before training starts, so an interrupted run can be resumed."""
    atomic_write(Path(path) / "config.yaml", lambda tmp: cfgmod.dump(config, tmp))


@contextmanager
def resumed_run(path: Path) -> Iterator[Optional[Config]]:
    """Hold an interrupted run folder's lock while it is resumed; yields its config (None when finished)."""
    path = Path(path)
    if not os.path.lexists(path / "config.yaml"):  # checked before the lock, which would create a missing folder
        resume_run_dir(path)
    with FolderLock(path, "run folder", fix="make it writable to resume the run"):
        yield resume_run_dir(path)


def resume_run_dir(path: Path, clean: bool = True) -> Optional[Config]:
    """The config of an interrupted run folder, or None when that run has already finished.

    With `clean`, remove the temporary files of a save that was killed (only the lock holder may)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CCNError(f"{path} is a file, not a run folder: pass the --out folder of the interrupted run")
    if not os.path.lexists(path / "config.yaml"):  # a FIFO or folder there is named by cfgmod.load
        raise CCNError(f"{path} is not a ccn run folder (no config.yaml): pass the --out folder of the interrupted run")
    if os.path.lexists(path / "results.json"):
        regular_file_size(path / "results.json", "results file", RESULTS_FIX)  # a FIFO does not finish a run
        return None
    config = cfgmod.load(path / "config.yaml")
    if not clean:
        return config
    try:
        remove_stale_temporaries(path)  # a save that was killed half-way; the file it replaced is intact
    except OSError as err:
        raise CCNError(f"cannot write to run folder {path} ({err.strerror or err}): make it writable to resume "
                       "the run") from None
    return config


def write_run(out_dir: Path, config: Config, model: torch.nn.Module, results: dict,
              hierarchy: Optional[Hierarchy]) -> None:
    out_dir = Path(out_dir)
    atomic_write(out_dir / "config.yaml", lambda tmp: cfgmod.dump(config, tmp))
    if hierarchy is not None:
        write_distances(out_dir, hierarchy, replace=False)
        atomic_write(out_dir / "hierarchy.json", lambda tmp: hierarchy.save(tmp))
    save_weights(model, out_dir / "model.safetensors", {"model": config.model.name})
    fault_point("before-results")  # results.json comes last: until it is there, --resume finishes the run again
    write_json(out_dir / "results.json", stamp("results", results))


def write_distances(out_dir: Path, hierarchy: Hierarchy, replace: bool = True) -> None:
    """distances.npy, once per run: step 2 writes it (replace); the end of the run writes it only if
    it is not there yet (a hierarchy resumed from a checkpoint holds no distances: its run wrote them)."""
    path = Path(out_dir) / DISTANCES_FILE
    if hierarchy.distances is not None and (replace or not path.exists()):
        save_distances(path, hierarchy.distances)


def load_run(run_dir: Path, overrides: list[str] | tuple = ()) -> tuple[Config, torch.nn.Module, Optional[Hierarchy], dict]:
    """(config, model with its weights, hierarchy or None, results) of a finished run folder; `overrides`
    (ccn evaluate --set) may change only SAVED_RUN_SET_KEYS."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CCNError(f"{run_dir} is a file, not a run folder: pass the folder a `ccn train` wrote")
    if not run_dir.is_dir():
        raise CCNError(f"run folder {run_dir} does not exist: pass the folder a `ccn train` wrote")
    check_saved_run_overrides(overrides)
    config = cfgmod.load(run_dir / "config.yaml", overrides)  # overrides only say where and how fast
    results = read_results(run_dir)
    check_config_unchanged(run_dir, results)
    hierarchy = Hierarchy.load(run_dir / "hierarchy.json") if os.path.lexists(run_dir / "hierarchy.json") else None
    check_run_files_agree(run_dir, config, results, hierarchy)
    check_preprocess_agrees(run_dir, config, results["preprocess"])
    model = build_model(config.model, config.train, results["num_classes"], hierarchy, config.method)
    if hierarchy is not None:
        check_weights_hold_the_hierarchy(run_dir, model.head)
    load_weights(model, run_dir / "model.safetensors")
    return config, model, hierarchy, results


def check_saved_run_overrides(overrides) -> None:
    """CCNError naming the first --set key a saved run does not take (see SAVED_RUN_SET_KEYS)."""
    for item in overrides:
        key, _ = cfgmod.parse_override(item)
        if key not in SAVED_RUN_SET_KEYS:
            allowed = ", ".join(SAVED_RUN_SET_KEYS)
            raise CCNError(f"--set {key}: a saved run is scored as it trained, so --set may only say where its "
                           f"data are, how fast to score them or how to read its outputs ({allowed}); to change "
                           f"{key}, train a new run")


def config_digest(recorded: dict) -> str:
    """sha256 of the values config.yaml records (a comment or key order does not count), leaving out
    WHERE_AND_HOW_FAST, which a moved data set or another machine may change by hand. Of the file's own
    keys, not of today's Config: a key a later ccn adds (with its default) must not refuse older runs."""
    values = json.loads(json.dumps(recorded))  # a deep copy
    for key in WHERE_AND_HOW_FAST:
        section, _, name = key.rpartition(".")
        (values.get(section, {}) if section else values).pop(name, None)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def recorded_config(config: Config) -> dict:
    """The values config.yaml records for `config` (what cfgmod.dump writes, read back)."""
    return cfgmod.parse_yaml(cfgmod.dumps(config))


def check_config_unchanged(run_dir: Path, results: dict) -> None:
    """config.yaml must hold the config that trained the run (results.json "config_sha256"): predict and
    export follow train.tta, train.bn_eps, method.inference ... silently. Runs saved before the digest
    existed (None) are not checked."""
    saved = results["config_sha256"]
    if saved is not None and saved != config_digest(cfgmod.read_yaml(run_dir / "config.yaml")):
        raise CCNError(f"{run_dir / 'config.yaml'} is not the config that trained the run (its digest differs from "
                       f"results.json's config_sha256): restore the config the run wrote; only "
                       f"{', '.join(WHERE_AND_HOW_FAST)} may be edited")


def check_weights_hold_the_hierarchy(run_dir: Path, head: torch.nn.Module) -> None:
    """hierarchy.json and model.safetensors must hold the same groups: the weights' head.group_of and
    head.mask (a tree head's head.edge_parent and head.is_leaf) decide the probabilities, hierarchy.json
    what clusters, predict and export name, so groups edited in one file, or weights copied from another
    run with as many groups, would print groups the network does not use. A tree head's file holds only
    the tree's shape, not which class sits at which leaf."""
    from safetensors import SafetensorError, safe_open

    weights = Path(run_dir) / "model.safetensors"
    check_weights_file(weights, "weights", RESULTS_FIX)
    expected = {f"head.{k}": v for k, v in head.state_dict().items() if not v.is_floating_point()}
    try:
        with safe_open(str(weights), framework="pt") as stored:
            # a newer format is refused here, before its tensors are taken for today's
            readable_format("weights", header_record(stored.metadata(), {}), RESULTS_FIX, f"weights {weights}")
            held = set(stored.keys())
            differ = next((key for key, mine in expected.items() if key in held
                           and not _same_tensor(stored.get_tensor(key), mine)), None)
    except (SafetensorError, OSError, ValueError):
        return  # load_weights names the damaged or missing file
    if differ is not None:
        raise CCNError(f"{run_dir / 'hierarchy.json'} and {weights} hold different groups (the weights' {differ} is "
                       "not the one hierarchy.json gives): restore both files from the run that wrote them")


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def check_hierarchy_file_matches_weights(run_dir: Path, hierarchy: Hierarchy) -> None:
    """`ccn clusters`: the groups it prints are the ones the run's weights use (when the weights are there)."""
    if os.path.lexists(Path(run_dir) / "model.safetensors"):
        head = make_head(cfgmod.MethodConfig(), 1, hierarchy.num_classes, hierarchy)  # the groups' buffers only
        check_weights_hold_the_hierarchy(run_dir, head)


def class_names(results: dict, hierarchy: Optional[Hierarchy]) -> list[str]:
    """The run's class names in the order of its outputs: hierarchy.json's, else results.json's. CCNError
    when neither names them (a format-0 results.json without 'classes' reads as None: ccn evaluate
    checks such a run by its class count, but nothing can print or export its classes)."""
    names = hierarchy.classes if hierarchy is not None else results["classes"]
    if names is None:
        raise CCNError("results.json has no class names: re-run training with this version of ccn")
    return list(names)


def check_same_classes(results: dict, classes: list[str], data_name: str) -> None:
    """CCNError unless data set `data_name` has the classes the run learned, by name and in order (a
    run's output k means its k-th class; the same count of other classes would be scored as nonsense).
    Runs whose results.json names no classes (None: saved before they were) can only be checked by count."""
    saved = results["classes"]
    if saved is None:
        if len(classes) != results["num_classes"]:
            raise CCNError(f"the run has {results['num_classes']} classes but data {data_name} has {len(classes)}: "
                           "evaluate on data with the same classes")
        return
    if list(saved) == list(classes):
        return
    unknown, absent = [c for c in classes if c not in saved], [c for c in saved if c not in classes]
    detail = (f"not learned by the run: {', '.join(unknown[:5])}" if unknown
              else f"missing: {', '.join(absent[:5])}" if absent else "the same names in another order")
    raise CCNError(f"data {data_name} does not have the classes the run learned ({detail}): evaluate on data "
                   "with the same classes, named as in the run's results.json")


def check_same_eval_set(run_dir: Path, results: dict, eval_set: str) -> None:
    """`ccn evaluate` scores the set the run was scored on (results.json "eval_set"): a config.yaml of a
    run saved before "config_sha256" existed could be edited to hold out a validation split, and its
    training images would be scored as a test set."""
    saved = results["eval_set"]
    if saved != eval_set:
        raise CCNError(f"the run was scored on its {saved} images but its config.yaml now selects the {eval_set} "
                       f"images (data.val_fraction): restore the config the run wrote ({run_dir / 'config.yaml'})")


def check_run_files_agree(run_dir: Path, config: Config, results: dict, hierarchy: Optional[Hierarchy]) -> None:
    """config.yaml, results.json and hierarchy.json must describe the same run."""
    if config.method.name == "ccn" and hierarchy is None:
        raise CCNError(f"{run_dir / 'config.yaml'} says method.name=ccn but {run_dir} has no hierarchy.json: "
                       "restore it from the run")
    if config.method.name == "flat" and hierarchy is not None:
        raise CCNError(f"{run_dir / 'config.yaml'} says method.name=flat but {run_dir} has a hierarchy.json: "
                       "remove it, or restore the config the run wrote")
    if hierarchy is None:
        return
    if hierarchy.num_classes != results["num_classes"] or hierarchy.classes != (results["classes"] or hierarchy.classes):
        raise CCNError(f"{run_dir / 'hierarchy.json'} and results.json name different classes "
                       f"({hierarchy.num_classes} and {results['num_classes']}): restore the files the run wrote")


def check_preprocess_agrees(run_dir: Path, config: Config, prep: dict) -> None:
    """results.json "preprocess" must decode and crop images as the run's data section does: `ccn predict`
    and `ccn export` follow the former, `ccn evaluate` the latter, and a network with global pooling takes
    any size, so a hand-edited size would score other images silently. (--set cannot change these keys.)"""
    recorded = {"stored side": prep["image_size"], "evaluation crop": _recorded_crop(prep),
                "fit": prep.get("fit", "stretch")}
    d = config.data  # a saved run's record: no data set is read here, so config.yaml says the crop
    crop = eval_transform(cfgmod.training_crop(d), input_size(d), d.eval_crop)
    expected = {"stored side": stored_size(config.data), "evaluation crop": crop and (crop.size, crop.fraction),
                "fit": "centre_crop" if config.data.name == "imagenet" else "stretch"}
    if expected["stored side"] is None:  # the data set's native size: config.yaml does not say it
        del recorded["stored side"], expected["stored side"]
    for fact, value in expected.items():
        if recorded[fact] != value:
            raise CCNError(f"{run_dir / 'results.json'} and config.yaml disagree on the images' {fact} "
                           f"({recorded[fact]} and {value}): {RESULTS_FIX}")


def _recorded_crop(prep: dict) -> Optional[tuple]:
    return (prep["input_size"], prep["eval_crop"]) if "input_size" in prep else None
