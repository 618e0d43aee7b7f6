"""Run folders: what a run writes, and how a saved run is read back.

    config.yaml        the fully resolved configuration
    metrics.jsonl      one row per epoch
    results.json       final top-1/top-5 (fractions) per inference rule, group accuracies, facts
    hierarchy.json     ccn runs: class names, the groups (names), the tree, the merge tree
    distances.npy      ccn runs: the class distances step 2 clustered (condensed float32), written once
    model.safetensors  the weights of the whole network (backbone and head)
    checkpoint.safetensors  the full training state after the last finished epoch (for --resume)
    .ccn-lock          present while a process writes the folder (see ccn.locks)

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
from ccn.checkpoint import (STATE_FILE, check_finite, check_weights_file, load_weights, save_weights,
                            state_difference)
from ccn.files import TEMPORARY_NAME, atomic_write, check_replaceable, fault_point, regular_file_size, write_json
from ccn.config import Config
from ccn.data import stored_size
from ccn.data.prepare import eval_transform
from ccn.errors import CCNError
from ccn.hierarchy import Hierarchy
from ccn.hierarchy.tree import DISTANCES_FILE, save_distances
from ccn.locks import LOCK_FILE, FolderLock
from ccn.models.base import configure_batchnorm
from ccn.network import build_model, make_head
from ccn.file_checks import (Invalid, checked, file_problem, read_json, require_int, require_keys, require_list_of_str,
                          require_mapping, require_number, require_numbers, require_str)

RUN_FILES = ("config.yaml", "plan.json", "metrics.jsonl", "results.json", "hierarchy.json", DISTANCES_FILE,
             "model.safetensors", STATE_FILE)
FIGURES = ("dendrogram.png", "distances.png")  # written by `ccn clusters --plot`; replaced with the run
GRID_FILE = "grid.yaml"  # what makes a folder an experiment folder (ccn.experiment): no run is written beside it
# What a grid writes beside runs/ (ccn.report.write_figures); a `ccn train` run folder holds RUN_FILES.
GRID_OUTPUTS = ("summary.json", "report.md", "differences.png", "per_group.png", "dendrogram.png", "distances.png")
OWN_FILES = RUN_FILES + FIGURES + (LOCK_FILE,)  # what no other command may write over (ccn export --out)

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
    save_weights(model, out_dir / "model.safetensors", {"format": "ccn-1", "model": config.model.name})
    fault_point("before-results")  # results.json comes last: until it is there, --resume finishes the run again
    write_json(out_dir / "results.json", results)


def write_distances(out_dir: Path, hierarchy: Hierarchy, replace: bool = True) -> None:
    """distances.npy, once per run: step 2 writes it (replace); the end of the run writes it only if
    it is not there yet (a hierarchy resumed from a checkpoint holds no distances: its run wrote them)."""
    path = Path(out_dir) / DISTANCES_FILE
    if hierarchy.distances is not None and (replace or not path.exists()):
        save_distances(path, hierarchy.distances)


RESULTS_FIX = "restore the file the run wrote, or delete the run folder and train it again"


def read_results(run_dir: Path) -> dict:
    """results.json of a finished run, checked field by field (CCNError naming the file otherwise)."""
    path = Path(run_dir) / "results.json"
    if not os.path.lexists(path):  # a FIFO or folder there is named as what it is by read_json
        raise CCNError(f"{run_dir} has no results.json: is it a finished ccn run folder?")
    results = read_json(path, "results file", RESULTS_FIX)
    with checked(path, RESULTS_FIX):
        check_results(results)
    return results


def check_results(results) -> None:
    """Invalid unless `results` holds every value ccn reads back from results.json, of the right kind."""
    require_mapping(results, "the file")
    require_keys(results, ["top1", "top5", "rule", "rules", "per_class_top1", "num_classes", "data", "model",
                           "epochs", "train_images", "test_images", "wall_time_s", "device", "machine", "preprocess"])
    for key in ("top1", "top5", "group_acc", "within_acc"):
        if key in results:  # top1 and top5 are required above; the group accuracies only in ccn runs
            require_number(results[key], f"'{key}'", 0, 1)
    require_str(results["rule"], "'rule'")
    rules = require_mapping(results["rules"], "'rules'")
    if results["rule"] not in rules:
        raise Invalid(f"'rule' is {results['rule']!r}, which is not in 'rules'")
    for rule, scores in rules.items():
        require_keys(require_mapping(scores, f"'rules'.{rule}"), ["top1", "top5"], f"'rules'.{rule}")
        for key in ("top1", "top5"):
            require_number(scores[key], f"'rules'.{rule}.{key}", 0, 1)
    num_classes = require_int(results["num_classes"], "'num_classes'", 2, cfgmod.BIG)
    if "classes" in results:
        require_list_of_str(results["classes"], "'classes'", num_classes)
    require_numbers(results["per_class_top1"], "'per_class_top1'", num_classes, 0, 1, allow_none=True)
    if "per_group_top1" in results:
        require_numbers(results["per_group_top1"], "'per_group_top1'", None, 0, 1, allow_none=True)
    for key in ("data", "model", "device", "machine"):
        require_str(results[key], f"'{key}'")
    require_int(results["epochs"], "'epochs'", 1)
    for key in ("train_images", "test_images"):
        require_int(results[key], f"'{key}'", 0)
    for key in ("wall_time_s", "clustering_seconds"):
        if key in results:
            require_number(results[key], f"'{key}'", 0)
    if "config_sha256" in results:
        require_str(results["config_sha256"], "'config_sha256'")
    if "eval_set" in results:
        require_str(results["eval_set"], "'eval_set'", ["test", "validation"])
    prep = require_mapping(results["preprocess"], "'preprocess'")
    require_keys(prep, ["image_size", "mean", "std"], "'preprocess'")
    require_int(prep["image_size"], "'preprocess'.image_size", 1, 4096)
    channels = len(require_numbers(prep["mean"], "'preprocess'.mean", None, 0, 1))
    if channels not in (1, 3):
        raise Invalid(f"'preprocess'.mean must have 1 or 3 entries (one per colour channel), has {channels}")
    require_numbers(prep["std"], "'preprocess'.std", channels, 1e-6, 1)
    if "fit" in prep:
        require_str(prep["fit"], "'preprocess'.fit", ["stretch", "centre_crop"])
    if "eval_crop" in prep or "input_size" in prep:
        require_keys(prep, ["input_size", "eval_crop"], "'preprocess'")
        require_int(prep["input_size"], "'preprocess'.input_size", 1, 4096)
        require_number(prep["eval_crop"], "'preprocess'.eval_crop", 0.25, 1)
    if "class_ids" in results:
        require_list_of_str(results["class_ids"], "'class_ids'", num_classes)


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
    model = build_model(config, results["num_classes"], hierarchy)
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
    existed are not checked."""
    saved = results.get("config_sha256")
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
        head = make_head(cfgmod.Config(), 1, hierarchy.num_classes, hierarchy)  # the groups' buffers only
        check_weights_hold_the_hierarchy(run_dir, head)


def check_same_classes(results: dict, classes: list[str], data_name: str) -> None:
    """CCNError unless data set `data_name` has the classes the run learned, by name and in order (a
    run's output k means its k-th class; the same count of other classes would be scored as nonsense).
    Runs whose results.json names no classes can only be checked by count."""
    saved = results.get("classes")
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
    saved = results.get("eval_set")
    if saved is not None and saved != eval_set:
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
    if hierarchy.num_classes != results["num_classes"] or hierarchy.classes != results.get("classes", hierarchy.classes):
        raise CCNError(f"{run_dir / 'hierarchy.json'} and results.json name different classes "
                       f"({hierarchy.num_classes} and {results['num_classes']}): restore the files the run wrote")


def check_preprocess_agrees(run_dir: Path, config: Config, prep: dict) -> None:
    """results.json "preprocess" must decode and crop images as the run's data section does: `ccn predict`
    and `ccn export` follow the former, `ccn evaluate` the latter, and a network with global pooling takes
    any size, so a hand-edited size would score other images silently. (--set cannot change these keys.)"""
    recorded = {"stored side": prep["image_size"], "evaluation crop": _recorded_crop(prep),
                "fit": prep.get("fit", "stretch")}
    crop = eval_transform(config)
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


# ---------------------------------------------------------------- starting from trained weights (model.init)


def init_weights_file(source: str) -> tuple[Path, Optional[list[str]]]:
    """(safetensors file, class names or None) of `model.init`: a run folder or a .safetensors file."""
    path = Path(source)
    if path.is_dir():
        weights = path / "model.safetensors"
        if not os.path.lexists(weights):
            raise CCNError(f"model.init={source} holds no model.safetensors: pass a finished run folder or a "
                           ".safetensors file")
        results = path / "results.json"  # checked like any results.json ccn reads back
        return weights, read_results(path).get("classes") if os.path.lexists(results) else None
    problem = file_problem(path)
    if problem:
        raise CCNError(f"model.init={source} {problem}: pass a run folder or a .safetensors file")
    if path.suffix != ".safetensors":
        raise CCNError(f"model.init={source} is not a .safetensors file: save the weights with "
                       "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')")
    return path, None


def split_init_state(state: dict, backbone_keys: set[str], timm: bool) -> tuple[dict, dict, str]:
    """(backbone state, flat-head state, layout) of a weights file.

    Our files name tensors `backbone.*` and `head.flat.*` (the other heads are not carried over). A
    bare backbone's file (e.g. `save_file(timm_model.state_dict())`) names them as the backbone does;
    a timm model sits under `model.` in our adapter. A bare file's one tensor pair that is not part
    of the backbone and looks like a classifier (weight (C, F), bias (C,)) is taken as its flat head."""
    if any(k.startswith("backbone.") for k in state):
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        flat = {k[len("head.flat."):]: v for k, v in state.items() if k.startswith("head.flat.")}
        return backbone, flat, "ccn"
    prefix = "model." if timm else ""
    backbone = {prefix + k: v for k, v in state.items() if prefix + k in backbone_keys}
    rest = {k: v for k, v in state.items() if prefix + k not in backbone_keys}
    flat = {}
    weights = [k for k, v in rest.items() if k.endswith(".weight") and v.ndim == 2]
    if len(weights) == 1 and weights[0][:-len("weight")] + "bias" in rest and len(rest) == 2:
        name = weights[0][:-len(".weight")]
        flat = {"weight": rest.pop(f"{name}.weight"), "bias": rest.pop(f"{name}.bias")}
    backbone.update({prefix + k: v for k, v in rest.items()})  # left over: reported as not fitting
    return backbone, flat, "bare backbone"


def damaged_flat_head(flat: dict) -> Optional[str]:
    """What makes a weights file's flat head unusable as any classifier (None when it is one)."""
    weight, bias = flat.get("weight"), flat.get("bias")
    if weight is None or bias is None:
        return f"its flat head has no {'weight' if weight is None else 'bias'}"
    if weight.ndim != 2 or bias.shape != weight.shape[:1]:
        return (f"its flat head weight is {tuple(weight.shape)} and bias {tuple(bias.shape)}, "
                "not (classes, features) and (classes,)")
    if not (weight.is_floating_point() and bias.is_floating_point()):
        return f"its flat head holds {str(weight.dtype).removeprefix('torch.')} values, not floating-point weights"
    return None


def fresh_head_reason(head: torch.nn.Linear, flat: dict, classes: list[str],
                      saved_classes: Optional[list[str]]) -> Optional[str]:
    """Why a well-formed flat head from a weights file is not carried over (None when it is)."""
    if not flat:
        return "the file has no flat head"
    rows, width = flat["weight"].shape
    if rows != len(classes):
        return f"its flat head has {rows} classes, this data set {len(classes)}"
    if width != head.in_features:
        return f"its flat head reads {width} features, this backbone gives {head.in_features}"
    if saved_classes is not None and list(saved_classes) != list(classes):
        return "its classes are not this data set's classes (names or order differ)"
    return None


def load_initial_weights(model: torch.nn.Module, config: Config, classes: list[str]) -> dict:
    """Load `model.init` into `model`: the backbone always (or a one-line error naming the mismatch),
    the flat head when it has this run's classes. Returns the record results.json keeps."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, saved_classes = init_weights_file(config.model.init)
    check_weights_file(weights, f"model.init={config.model.init}:", "pass a run folder or a .safetensors file")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise CCNError(f"model.init: cannot read {weights} ({err}): the file is damaged or not safetensors") from None
    timm = config.model.name.startswith("timm:")
    backbone, flat, layout = split_init_state(state, set(model.backbone.state_dict()), timm)
    problem = state_difference(model.backbone, backbone)
    if problem:
        raise CCNError(f"model.init={weights} does not fit model.name={config.model.name} ({problem}): start "
                       "from weights of the same backbone with the same model.* options")
    damage = damaged_flat_head(flat) if flat else None
    if damage:
        raise CCNError(f"model.init={weights} is damaged ({damage}): save the weights again from the model "
                       "(safetensors.torch.save_file(model.state_dict(), ...))")
    check_finite({**backbone, **{f"head.flat.{k}": v for k, v in flat.items()}}, weights,
                 "model.init must hold finite weights (a diverged run's are not); choose another file")
    model.backbone.load_state_dict(backbone)
    scales_reset = not config.train.bn_weight and _reset_norm_scales(model.backbone)
    why = fresh_head_reason(model.head.flat, flat, classes, saved_classes)
    if why is None:
        model.head.flat.load_state_dict(flat)
    record = {"from": str(weights), "layout": layout, "backbone": True, "flat_head": why is None}
    if why is not None:
        record["flat_head_fresh_because"] = why
    elif saved_classes is None:
        record["note"] = "the file names no classes: its classifier is taken to follow this data set's class order"
    if scales_reset:
        record["bn_scales"] = "the file's BatchNorm scales were set to 1 (train.bn_weight=false)"
    return record


def _reset_norm_scales(backbone: torch.nn.Module) -> bool:
    """train.bn_weight=false means BatchNorm scales fixed at 1 with model.init too (the file's trained
    scales would otherwise stay frozen at their values); True when the file held others."""
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    differed = any(m.weight is not None and not torch.all(m.weight == 1) for m in norms)
    configure_batchnorm(backbone, train_weight=False)
    return differed
