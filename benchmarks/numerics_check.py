"""Numerics check for refactors (issue 29, item 4): did the change alter any run config or any weight?

    python benchmarks/numerics_check.py --out before.json        # record the checkout whose src is imported
    python benchmarks/numerics_check.py --compare before.json after.json   # exit 1 on any difference

What it records, for the ccn package it imports (set PYTHONPATH=CHECKOUT/src to pick a checkout):

1. Run configs. Every committed grid (src/ccn/configs/experiments/*.yaml, docs/results/*/grid.yaml) is read
   with ccn's own grid loader and, for each (variant, seed), the exact text ccn writes as that run's
   config.yaml is hashed (sha256). The built-in configs (src/ccn/configs/*.yaml) are hashed the same
   way, as `ccn train --config` would write them. No data is read: a grid that cannot be resolved
   records its error line instead, so a changed refusal shows up too.
2. Weights. Short digits runs (4 epochs of digits.yaml, seed 0: flat, ccn, ccn at depth 2, ccn with step
   checkpoints every 10 steps) are trained through the command line with OMP_NUM_THREADS=1, and two
   resume cases: the depth-2 run killed inside epoch 2 before its checkpoint (so it resumes after
   epoch 1) and the step-checkpoint run killed at step 65 (so it resumes inside epoch 2), each then
   `ccn train --resume`d. Each final model.safetensors's tensors are hashed (name, dtype, shape and
   bytes in sorted key order, not the file, whose metadata may differ), and so is results.json's top1.
   A resumed run must also equal its uninterrupted run, without training epoch 1 again.

`--compare` ignores the commit, versions, date and timings, prints every other difference (and a diff
of the first run config text that changed) and exits 1 when anything differs, 0 when all is identical.

The few ccn names it uses are looked up in more than one place (load_grid in ccn.grid, then
ccn.experiment; the per-run config as grid.config_for or a module function config_for; dumps in
ccn.config, then ccn.records), so one copy of this script runs on both sides of a refactor.
About a minute on 2 CPU cores (45 s unloaded); the record also holds the commit, torch version and date.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import hashlib
import importlib
import json
import re
import os
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

SEED = 0
EPOCHS = 4  # groups after epoch 1, the depth-2 split after epoch 2: every stage trains
SHORT = ["--set", f"train.epochs={EPOCHS}", "--set", f"seed={SEED}", "--set", "train.progress=false"]
RUNS = {  # name -> extra --set options on top of digits.yaml (method ccn)
    "flat": ["--set", "method.name=flat"],
    "ccn": [],
    "depth2": ["--set", "method.depth=2"],
    "ccn-step-checkpoints": ["--set", "train.checkpoint_every=10"],  # 42 steps an epoch: saves inside epochs
}
# resume cases: the run repeated, killed by ccn's testing hook (CCN_FAULT), then `ccn train --resume`d to the end
RESUMES = {
    # inside epoch 2, after its metrics row and before its checkpoint: epoch 1's checkpoint is the newest
    "depth2": "after-epoch-row-2",
    # at step 65, inside epoch 2: resumed from the step checkpoint of step 60, after batch 18 of epoch 2
    "ccn-step-checkpoints": "step-65",
}


# ---------------------------------------------------------------- finding ccn's functions across a refactor

def _find(names_in_modules: list[tuple[str, str]]):
    """The first function that exists of (module, name) pairs."""
    for module_name, name in names_in_modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if callable(getattr(module, name, None)):
            return getattr(module, name)
    raise SystemExit(f"numerics_check: none of {names_in_modules} exists in this ccn")


def load_grid_function():
    return _find([("ccn.grid", "load_grid"), ("ccn.experiment", "load_grid")])


def dumps_function():
    return _find([("ccn.config", "dumps"), ("ccn.records", "dumps")])


def run_config(grid, variant: str, seed: int):
    """The Config a grid gives run (variant, seed), as the experiment runner builds it."""
    if callable(getattr(grid, "config_for", None)):
        return grid.config_for(variant, seed)
    return _find([("ccn.grid", "config_for"), ("ccn.experiment", "config_for")])(grid, variant, seed)


# ---------------------------------------------------------------- part 1: run configs

def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def error_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def grid_files(root: Path) -> list[Path]:
    return sorted((root / "src/ccn/configs/experiments").glob("*.yaml")) + sorted(root.glob("docs/results/*/grid.yaml"))


def grid_record(path: Path, texts: dict) -> dict:
    """{variant: {seed: sha256 of its config.yaml text}}, or {"error": line} when the grid does not resolve;
    each text goes into `texts` by its hash, so that a comparison can show what changed."""
    load_grid, dumps = load_grid_function(), dumps_function()
    try:
        grid = load_grid(path)
    except Exception as err:  # a refusal is recorded, not fatal: the refactor must keep it too
        return {"error": error_line(err)}
    record: dict = {"variants": {}}
    for variant in grid.variants:
        per_seed = record["variants"][variant] = {}
        for seed in grid.seeds:
            try:
                text = dumps(run_config(grid, variant, seed))
                per_seed[str(seed)] = sha256(text)
                texts[sha256(text)] = text
            except Exception as err:
                per_seed[str(seed)] = {"error": error_line(err)}
    return record


def config_record(path: Path, texts: dict) -> dict:
    """A built-in config as `ccn train --config PATH` writes it."""
    load, dumps = _find([("ccn.config", "load")]), dumps_function()
    try:
        text = dumps(load(path))
        texts[sha256(text)] = text
        return {"sha256": sha256(text)}
    except Exception as err:
        return {"error": error_line(err)}


def configs_part(root: Path) -> dict:
    texts: dict = {}
    grids = {str(path.relative_to(root)): grid_record(path, texts) for path in grid_files(root)}
    configs = {str(path.relative_to(root)): config_record(path, texts)
               for path in sorted((root / "src/ccn/configs").glob("*.yaml"))}
    return {"grids": grids, "configs": configs, "config_texts": texts}


# ---------------------------------------------------------------- part 2: weights

def tensor_hashes(path: Path) -> dict:
    """sha256 per tensor of a safetensors file (dtype, shape and bytes), read by its format, not by torch."""
    raw = path.read_bytes()
    (header_size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_size])
    data = raw[8 + header_size:]
    hashes = {}
    for name in sorted(k for k in header if k != "__metadata__"):
        entry = header[name]
        start, end = entry["data_offsets"]
        hashes[name] = sha256(f"{entry['dtype']}{entry['shape']}".encode() + data[start:end])
    return hashes


def ccn_command(src: Path, args: list[str], cwd: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CCN_FAULT"}
    env.update(PYTHONPATH=str(src), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if fault is not None:
        env["CCN_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "ccn", *args], cwd=cwd, env=env, capture_output=True, text=True)


def run_record(run_dir: Path, seconds: float) -> dict:
    tensors = tensor_hashes(run_dir / "model.safetensors")
    top1 = json.loads((run_dir / "results.json").read_text())["top1"]
    return {"weights_sha256": sha256("".join(f"{k}:{v}\n" for k, v in tensors.items())), "tensors": tensors,
            "top1": top1, "top1_sha256": sha256(repr(top1)), "seconds": round(seconds, 1)}


def train_run(src: Path, config: Path, extra: list[str], out: Path, fault: str | None = None):
    started = time.perf_counter()
    done = ccn_command(src, ["train", "--config", str(config), *SHORT, *extra, "--out", str(out)], out.parent, fault)
    return done, time.perf_counter() - started


def failed(done: subprocess.CompletedProcess, what: str) -> dict:
    lines = (done.stderr or done.stdout).strip().splitlines()
    return {"error": f"{what} exited {done.returncode}: {lines[-1] if lines else ''}"}


def weights_part(src: Path, config: Path, work: Path) -> dict:
    records = {}
    for name, extra in RUNS.items():
        done, seconds = train_run(src, config, extra, work / name)
        records[name] = run_record(work / name, seconds) if done.returncode == 0 else failed(done, f"{name} run")
    for name, fault in RESUMES.items():
        resumed = records[f"{name}-resumed"] = resumed_record(src, config, work, name, fault)
        resumed["equals_uninterrupted"] = ("weights_sha256" in resumed and resumed["top1"] == records[name].get("top1")
                                           and resumed["weights_sha256"] == records[name].get("weights_sha256"))
    return records


def resumed_record(src: Path, config: Path, work: Path, name: str, fault: str) -> dict:
    """Run `name` killed by ccn's fault hook at `fault`, then `ccn train --resume`d to the end."""
    out = work / f"{name}-resumed"
    killed, seconds = train_run(src, config, RUNS[name], out, fault=fault)
    if killed.returncode != -9:  # the hook moved or vanished: the case would not test a resume
        return failed(killed, f"run meant to be killed at CCN_FAULT={fault}")
    started = time.perf_counter()
    resumed = ccn_command(src, ["train", "--resume", str(out)], work)
    if resumed.returncode != 0:
        return failed(resumed, "--resume")
    # a resume that silently started afresh would also end equal: it must not train epoch 1 again
    retrained = bool(re.search(r"^epoch +1/", resumed.stdout + resumed.stderr, re.MULTILINE))
    return {**run_record(out, seconds + time.perf_counter() - started), "killed_at": fault,
            "epoch_1_trained_again": retrained}


# ---------------------------------------------------------------- the record and the comparison

def checkout_of(root: Path) -> dict:
    """The commit of the checkout whose src/ is imported, and whether its src/ differs from that commit."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else f"(git failed: {done.stderr.strip()})"
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "src")),
            "root": str(root)}


def record(weights: bool = True) -> dict:
    import ccn
    import torch
    src = Path(ccn.__file__).resolve().parents[1]
    root = src.parent
    started = time.perf_counter()
    result = {"checkout": checkout_of(root), "torch": torch.__version__, "python": sys.version.split()[0],
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **configs_part(root)}
    if weights:
        with tempfile.TemporaryDirectory(prefix="numerics-") as work:
            result["runs"] = weights_part(src, root / "src/ccn/configs/digits.yaml", Path(work))
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


# what differs between two records without meaning a numerical change
NOT_COMPARED = {"checkout", "torch", "python", "date", "seconds", "config_texts"}


def differences(before, after, path: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after), key=str):
            if not path and key in NOT_COMPARED or key == "seconds":
                continue
            where = f"{path}/{key}" if path else str(key)
            if key not in after:
                found.append(f"{where}: only in before")
            elif key not in before:
                found.append(f"{where}: only in after")
            else:
                found += differences(before[key], after[key], where)
        return found
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"]


def show_first_text_change(before: dict, after: dict, found: list) -> None:
    """A unified diff of the first run config whose text changed: the hashes alone say only that it did."""
    for line in found:
        was, now = re.findall(r"'([0-9a-f]{64})'", line)[:2] or (None, None)
        old, new = before.get("config_texts", {}).get(was), after.get("config_texts", {}).get(now)
        if old is not None and new is not None:
            print(f"first changed config text ({line.split(':')[0]}):")
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "before", "after"))
            return


def compare(before_path: str, after_path: str) -> int:
    before, after = (json.loads(Path(p).read_text()) for p in (before_path, after_path))
    for key in ("checkout", "torch"):
        print(f"{key}: {before.get(key)} -> {after.get(key)}")
    found = differences(before, after)
    for line in found:
        print(line)
    for name in RESUMES:
        resumed = after.get("runs", {}).get(f"{name}-resumed", {})
        if "runs" in after and (not resumed.get("equals_uninterrupted") or resumed.get("epoch_1_trained_again")):
            found.append(f"runs/{name}-resumed")
            print(f"runs/{name}-resumed: in AFTER, the resumed run does not equal the uninterrupted one, "
                  "or it trained epoch 1 again")
    show_first_text_change(before, after, found)
    print(f"{len(found)} difference(s)" if found else "identical: every run config and every weight")
    return 1 if found else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the record of the imported ccn to this JSON file")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two records")
    parser.add_argument("--no-weights", action="store_true", help="skip the training runs (configs only)")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        parser.error("give --out FILE.json or --compare BEFORE.json AFTER.json")
    try:
        result = record(weights=not args.no_weights)
    except Exception:
        traceback.print_exc()
        return 2
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}: {result['checkout']['commit']} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
