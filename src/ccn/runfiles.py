"""The files of a run folder and of an experiment folder, by name, and results.json read back.

    config.yaml        the fully resolved configuration: what the user asked
    plan.json          the run plan: the defaults that depend on the data, resolved (ccn.plan), for
                       the reader: never read back (a resume plans again from config.yaml and the data)
    metrics.jsonl      one row per epoch
    results.json       final top-1/top-5 (fractions) per inference rule, group accuracies, facts
    hierarchy.json     ccn runs: class names, the groups (names), the tree, the merge tree
    distances.npy      ccn runs: the class distances step 2 clustered (condensed float32), written once
    model.safetensors  the weights of the whole network (backbone and head)
    checkpoint.safetensors  the full training state after the last finished epoch (for --resume)
    .ccn-lock          present while a process writes the folder (see ccn.locks)

No torch here: a finished run's or grid's numbers are read (ccn.report) without the model stack.
Writing and loading a run folder is ccn.runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from ccn import config as cfgmod
from ccn.errors import CCNError
from ccn.file_checks import (Invalid, checked, require_int, require_keys, require_list_of_str, require_mapping,
                             require_number, require_numbers, require_str)
from ccn.locks import LOCK_FILE
from ccn.records import read_record

DISTANCES_FILE = "distances.npy"  # condensed float32 class distances, beside hierarchy.json
STATE_FILE = "checkpoint.safetensors"  # the training state of the last finished epoch (ccn.checkpoint)
PLAN_FILE = "plan.json"  # the run plan beside config.yaml (ccn.plan.RunPlan.to_json)
RUN_FILES = ("config.yaml", PLAN_FILE, "metrics.jsonl", "results.json", "hierarchy.json", DISTANCES_FILE,
             "model.safetensors", STATE_FILE)
FIGURES = ("dendrogram.png", "distances.png")  # written by `ccn clusters --plot`; replaced with the run
GRID_FILE = "grid.yaml"  # what makes a folder an experiment folder (ccn.experiment): no run is written beside it
# What a grid writes beside runs/ (ccn.report.write_figures); a `ccn train` run folder holds RUN_FILES.
GRID_OUTPUTS = ("summary.json", "report.md", "differences.png", "per_group.png", "dendrogram.png", "distances.png")
OWN_FILES = RUN_FILES + FIGURES + (LOCK_FILE,)  # what no other command may write over (ccn export --out)


RESULTS_FIX = "restore the file the run wrote, or delete the run folder and train it again"


def read_results(run_dir: Path) -> dict:
    """results.json of a finished run in today's layout (ccn.records "results"), checked field by field
    (CCNError naming the file otherwise)."""
    path = Path(run_dir) / "results.json"
    if not os.path.lexists(path):  # a FIFO or folder there is named as what it is by read_json
        raise CCNError(f"{run_dir} has no results.json: is it a finished ccn run folder?")
    results = read_record("results", path, RESULTS_FIX)
    with checked(path, RESULTS_FIX):
        check_results(results)
    return results


def check_results(results) -> None:
    """Invalid unless `results` holds every value ccn reads back from results.json, of the right kind."""
    require_mapping(results, "the file")
    require_keys(results, ["top1", "top5", "rule", "rules", "per_class_top1", "num_classes", "classes", "data", "model",
                           "epochs", "train_images", "test_images", "eval_set", "wall_time_s", "device", "machine",
                           "preprocess", "config_sha256", "code", "torch", "finished"])
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
    if results["classes"] is not None:  # None: a run from before the names were recorded
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
    if results["config_sha256"] is not None:  # None: a run from before the digest was recorded
        require_str(results["config_sha256"], "'config_sha256'")
    for key in ("torch", "finished"):  # None: a run from before they were recorded (the report says so)
        if results[key] is not None:
            require_str(results[key], f"'{key}'")
    if results["code"] is not None:
        require_mapping(results["code"], "'code'")
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
