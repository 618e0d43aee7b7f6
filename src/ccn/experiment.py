"""`ccn experiment`: run a grid (ccn.grid) of variants x seeds, paired by seed, and summarise it
with intervals (ccn.report).

Each (variant, seed) trains in OUT/runs/<variant>-s<seed>/. A finished run is reused and an
interrupted one resumed, so running the same command again continues the grid; a grid that only
adds seeds or variants (`--set seeds=[...]`) widens it in place.

OUT/grid.yaml records each primary comparison with the time it was declared and whether any run had
started then; only those declared before the first run are reported as pre-planned (and adjusted as
their own Holm family). A primary added to a folder that already holds runs is recorded as added later.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Optional

import yaml

from ccn import config as cfgmod
from ccn.files import atomic_write
from ccn.errors import CCNError, ConfigError
from ccn.grid import Grid
from ccn.locks import FolderLock
from ccn.progress import echo, progress_bar
from ccn.runfiles import GRID_FILE, GRID_OUTPUTS, RUN_FILES, read_results
from ccn.runs import NewRun, resumed_run


def run_grid(grid: Grid, out: Path, log=echo) -> dict:
    """Train every (variant, seed) not yet finished, then write summary.json, report.md and figures.

    The experiment folder is locked for the whole grid, and each run folder while it trains, so a
    second `ccn experiment` (or `ccn train --resume` of one run) cannot write beside this one."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CCNError(f"--out {out} is a file, not a folder: choose another --out")
    with FolderLock(out, "experiment folder", fix="choose a writable --out"):
        return _run_locked_grid(grid, out, log)


def _run_locked_grid(grid: Grid, out: Path, log) -> dict:
    from ccn.report import write_report

    runs = [(variant, seed) for seed in grid.seeds for variant in grid.variants]
    pending = _claim_folder(out, grid, log)
    data_cache: dict = {}
    started = time.perf_counter()
    shown = grid.config_for(grid.reference, grid.seeds[0]).train.progress
    with progress_bar(total=len(runs), desc="experiment runs", unit="run", enabled=shown) as bar:
        for variant, seed in runs:
            _run_one(grid, out, variant, seed, data_cache, log)
            bar.update(1)
    if pending is not None:  # only now: until every run of the wider grid has finished, the folder keeps its old grid
        atomic_write(out / GRID_FILE, lambda tmp: tmp.write_text(pending))
    return write_report(grid, out, time.perf_counter() - started)


def _check_started_runs(grid: Grid, out: Path) -> None:
    """Every run folder already in OUT must hold the config this grid would give it: with grid.yaml
    lost, a grid of another base config must not reuse (or resume) runs trained on the old one."""
    for variant, seed in ((variant, seed) for seed in grid.seeds for variant in grid.variants):
        saved_path = out / "runs" / f"{variant}-s{seed}" / "config.yaml"
        if not saved_path.is_file():
            continue
        saved = cfgmod.load(saved_path).to_dict()
        wanted = grid.config_for(variant, seed).to_dict()
        if saved != wanted:
            key, was, now = _first_difference(saved, wanted)
            raise CCNError(f"{saved_path.parent} was trained with another config than this grid gives it ({key}: "
                           f"{was!r} there, {now!r} here): choose another --out, or run the grid it belongs to")


def _first_difference(saved: dict, wanted: dict, prefix: str = "") -> tuple:
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and a != b:
            return _first_difference(a, b, f"{prefix}{key}.")
        if a != b:
            return f"{prefix}{key}", a, b
    return prefix.rstrip(".") or "config", saved, wanted


def _run_one(grid: Grid, out: Path, variant: str, seed: int, data_cache: dict, log) -> None:
    """Train (or resume, or reuse) the run of one (variant, seed) in OUT/runs/<variant>-s<seed>/.

    A started run (config.yaml is there) is resumed; a new one writes config.yaml only once its data
    and model are ready, so a run that fails at start-up is started afresh next time."""
    from ccn.data import load_dataset
    from ccn.pipeline import run_training
    from ccn.tracking import RunLog

    run_dir = out / "runs" / f"{variant}-s{seed}"
    config = grid.config_for(variant, seed)
    if (run_dir / "results.json").is_file():
        log(f"[{variant} seed {seed}] finished earlier: reused")
        return
    key = repr(config.data)
    if key not in data_cache:  # variants share the data; keep one copy
        data_cache.clear()
        data_cache[key] = load_dataset(config.data)
    train = dict(log=RunLog(run_dir, stream=_NullStream()), ds=data_cache[key])
    if (run_dir / "config.yaml").is_file():
        with resumed_run(run_dir):
            log(f"[{variant} seed {seed}] resuming in {run_dir}")
            run_training(config, run_dir, resume=True, **train)
    else:
        with NewRun(run_dir) as run:
            log(f"[{variant} seed {seed}] training in {run_dir}")
            run_training(config, run_dir, on_start=lambda: run.start(config), **train)
    log(f"[{variant} seed {seed}] top1 {100 * read_results(run_dir)['top1']:.2f}%")


def _claim_folder(out: Path, grid: Grid, log=echo) -> Optional[str]:
    """Give OUT its grid.yaml, or check that an existing OUT holds the same grid or one this grid
    extends; when this grid widens the folder's, return the new grid.yaml text for the caller to
    write once every run has finished (so a widening that fails leaves the old grid reportable).
    Either way, the runs already there must hold the configs this grid gives them.

    Adding seeds or variants to a grid leaves every finished run valid (the base config and each
    variant's overrides are unchanged), so a study can be widened in place to narrow its intervals.
    Primary comparisons are kept once declared, with their time; new ones are appended (sets
    grid.primary_records)."""
    path = out / GRID_FILE
    wanted = yaml.safe_load(yaml.safe_dump(grid.raw, sort_keys=False))
    saved, records, widened = None, [], False
    if not path.exists():
        _refuse_foreign_folder(out, grid)
    else:
        try:
            saved = cfgmod.read_yaml(path)
        except ConfigError as err:
            raise CCNError(f"{path} is damaged ({err}): restore it to continue the grid, or choose another --out") from None
        if isinstance(saved, dict):
            named = saved.get("variants")  # the folder's own variants: a narrower grid is refused below, not here
            records = _primary_records(saved.pop("primary", []), path, set(named) if isinstance(named, dict) else set())
        if saved != wanted:
            added = _grid_additions(saved, wanted)
            if added is None:
                raise CCNError(f"{out} holds another grid (see {path}): choose another --out, or restore the grid to "
                               "continue it (a grid may only add seeds or variants to the one a folder holds)")
            log(f"{out}: the grid grows by {added}; finished runs are reused" if added else
                f"{out}: the same seeds and variants in another order; nothing is added, finished runs are reused")
            widened = True
    _check_started_runs(grid, out)  # with grid.yaml lost, the runs themselves say which grid they belong to
    records = _declare_primary(records, grid.primary, _runs_started(out), out, log)
    grid.primary_records = records
    text = yaml.safe_dump({**grid.raw, **({"primary": records} if records else {})}, sort_keys=False)
    if widened:
        return text  # written by the caller once every run has finished
    if not path.exists() or path.read_text() != text:
        atomic_write(path, lambda tmp: tmp.write_text(text))
    return None


def _refuse_foreign_folder(out: Path, grid: Grid) -> None:
    """A folder without grid.yaml may hold other files (they are left alone), or this grid's runs
    whose grid.yaml was lost (_check_started_runs checks that they are this grid's; its report is
    then rewritten). Otherwise it must not hold files the grid would overwrite (a report, a summary,
    figures), nor be a run folder of `ccn train`."""
    if not out.is_dir() or any((out / "runs" / f"{variant}-s{seed}" / "config.yaml").is_file()
                               for variant in grid.variants for seed in grid.seeds):
        return
    clashes = sorted(name for name in set(GRID_OUTPUTS + RUN_FILES) if (out / name).exists())
    if clashes:
        raise CCNError(f"--out {out} has no grid.yaml but holds {', '.join(clashes[:4])}"
                       f"{' ...' if len(clashes) > 4 else ''}, which ccn experiment would overwrite or mix with its "
                       "own: choose another --out (or restore the folder's grid.yaml to continue its grid)")


def _runs_started(out: Path) -> bool:
    """Whether any run of the grid has started: a run folder holds its config.yaml from its first
    step (a stray file in runs/, such as .DS_Store, is not a run)."""
    runs = out / "runs"
    return runs.is_dir() and any((folder / "config.yaml").is_file() for folder in runs.iterdir())


def _declare_primary(records: list, pairs: list, runs_started: bool, out: Path, log) -> list:
    """The saved records plus the grid's new primary comparisons, stamped now (UTC)."""
    known = [r["compare"] for r in records]
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    new = [{"compare": pair, "declared": now, "before_any_run": not runs_started} for pair in pairs
           if pair not in known and pair[::-1] not in known]  # either order is the comparison already recorded
    if new and runs_started:
        log(f"{out}: primary comparison(s) {', '.join(' vs '.join(r['compare']) for r in new)} declared after runs "
            "had started: recorded as added later, not as pre-planned")
    return records + new


def _primary_records(records, path: Path, variants: set) -> list:
    """grid.yaml's `primary:` records, checked: each {compare: [a, b], declared: time, before_any_run: bool},
    a and b variants of the grid (a record naming another would drop out of the report unseen)."""
    def fits(r) -> bool:
        return (isinstance(r, dict) and set(r) == {"compare", "declared", "before_any_run"}
                and isinstance(r["compare"], list) and len(r["compare"]) == 2
                and all(isinstance(n, str) and n in variants for n in r["compare"]) and isinstance(r["declared"], str)
                and isinstance(r["before_any_run"], bool))
    if not isinstance(records, list) or not all(fits(r) for r in records):
        raise CCNError(f"{path} is damaged (its primary: section is not a list of {{compare: [a, b], declared: time, "
                       "before_any_run: true/false}} with a and b variants of the grid): restore it to continue the grid, or choose another --out")
    return records


def _grid_additions(saved, wanted: dict) -> Optional[str]:
    """What `wanted` adds to the saved grid ("seeds 3, 4"), or None unless it only adds seeds or variants."""
    if not isinstance(saved, dict) or set(saved) != set(wanted):
        return None
    if saved["base"] != wanted["base"] or saved["reference"] != wanted["reference"]:
        return None
    saved_variants, saved_seeds = saved["variants"], saved["seeds"]
    if (not isinstance(saved_variants, dict) or not isinstance(saved_seeds, list)
            or not all(isinstance(seed, int) for seed in saved_seeds)):
        return None
    if any(wanted["variants"].get(name, object()) != overrides for name, overrides in saved_variants.items()):
        return None
    if not set(saved_seeds) <= set(wanted["seeds"]):
        return None
    parts = [f"{what} {', '.join(map(str, new))}" for what, new in (
        ("seeds", [s for s in wanted["seeds"] if s not in saved_seeds]),
        ("variants", [v for v in wanted["variants"] if v not in saved_variants])) if new]
    return " and ".join(parts)


class _NullStream:
    """Per-run console lines stay in each run's metrics.jsonl; the grid prints one line per run."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
