"""`ccn experiment`: a grid of variants x seeds, paired by seed, summarised with intervals.

Grid file:

    base:            # a config (data:, model:, train:, method:), shared by every run
      data: {name: digits}
    variants: [flat, ccn, random, late-3, l2]     # built-in names, or name -> nested overrides
                     # (a built-in name with overrides: the built-in variant with them on top, such as
                     # flat: {train: {lr: 0.1}}; one that changes what the name sets is refused)
    seeds: [0, 1, 2]
    reference: flat  # paired differences are taken against this variant
    primary: [ccn, [ccn, k-1]]   # optional: the comparisons planned before the grid runs (a name: vs
                                 # the reference; a pair: the first against the second)

grid.yaml records each primary comparison with the time it was declared and whether any run had
started then; only those declared before the first run are reported as pre-planned (and adjusted as
their own Holm family). A primary added to a folder that already holds runs is recorded as added later.

Each (variant, seed) trains in OUT/runs/<variant>-s<seed>/. A finished run is reused and an
interrupted one resumed, so running the same command again continues the grid; a grid that only
adds seeds or variants (`--set seeds=[...]`) widens it in place.
"""

from __future__ import annotations

import copy
import datetime
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from ccn import config as cfgmod
from ccn.files import atomic_write
from ccn.errors import CCNError, ConfigError
from ccn.locks import FolderLock
from ccn.progress import echo, progress_bar
from ccn.records import read_record, stamp
from ccn.runs import GRID_FILE, GRID_OUTPUTS, RUN_FILES, NewRun, read_results, resumed_run

METRIC_VARIANTS = ("l2", "cosine", "js", "confusion")
NORM_SUFFIX, RANDOM_SUFFIX = "-norm", "-random"


def builtin_variant(name: str) -> Optional[dict]:
    """Overrides of the built-in variants (BUILTIN_VARIANTS says what each one is).

    Any built-in ccn variant takes the suffix `-norm`: the same run with method.normalize_loss=true,
    the loss-scale control (`ccn-norm`, `k-1-norm`, `random-norm`, ...); and any built-in learned
    partition the suffix `-random`: random groups of the sizes it learns (`k-5-random`, `prior-random`);
    `oracle-random` (and `oracle-random-norm`) are random groups of the sizes of the data set's coarse labels."""
    for suffix, extra in ((NORM_SUFFIX, {"normalize_loss": True}), (RANDOM_SUFFIX, {"partition": "random"})):
        if name.endswith(suffix) and name != suffix.lstrip("-"):
            grouped = builtin_variant(name[:-len(suffix)])
            if grouped is not None and grouped["method"].get("partition") == "oracle" and suffix == RANDOM_SUFFIX:
                return {"method": {**grouped["method"], "partition": "random", "random_sizes": "oracle"}}
            if grouped is None or grouped["method"]["name"] != "ccn" or grouped["method"].keys() & extra.keys():
                return None  # flat has nothing to normalise or shuffle; a suffix is not taken twice
            return {"method": {**grouped["method"], **extra}}
    fixed = {
        "flat": {"method": {"name": "flat"}},
        "ccn": {"method": {"name": "ccn"}},
        "random": {"method": {"name": "ccn", "partition": "random"}},
        "oracle": {"method": {"name": "ccn", "partition": "oracle"}},
        "depth2": {"method": {"name": "ccn", "depth": 2}},
        "balanced": {"method": {"name": "ccn", "clustering": "balanced"}},
        "balanced-random": {"method": {"name": "ccn", "clustering": "balanced", "partition": "random"}},
        "prior": {"method": {"name": "ccn", "profile": "prior"}},
        "prior-balanced": {"method": {"name": "ccn", "profile": "prior", "clustering": "balanced"}},
    }
    if name in fixed:
        return fixed[name]
    if name in METRIC_VARIANTS:
        return {"method": {"name": "ccn", "metric": name}}
    late = re.fullmatch(r"late-(\d+)", name)
    if late:
        return {"method": {"name": "ccn", "cluster_epoch": int(late.group(1))}}
    k = re.fullmatch(r"k-(\d+)", name)
    if k:
        return {"method": {"name": "ccn", "groups": int(k.group(1))}}
    return None


BUILTIN_VARIANTS = ("flat, ccn, random, oracle, oracle-random, late-E, k-N, balanced, balanced-random, prior, "
                    "prior-balanced, l2, cosine, js, confusion, depth2; any ccn one + -norm (ccn-norm, k-1-norm), "
                    "any learned one + -random (k-5-random)")


@dataclass
class Grid:
    base: dict
    variants: dict  # name -> nested overrides
    seeds: list
    reference: str = "flat"
    name: str = "grid"
    raw: dict = field(default_factory=dict)
    primary: list = field(default_factory=list)  # [[a, b], ...] as the grid file declares them
    primary_records: list = field(default_factory=list)  # grid.yaml's: + when declared, before any run or not

    def config_for(self, variant: str, seed: int) -> cfgmod.Config:
        merged = deep_merge(copy.deepcopy(self.base), self.variants[variant])
        merged["seed"] = seed
        try:
            return cfgmod.from_dict(merged)
        except ConfigError as err:
            raise ConfigError(f"variant {variant!r}: {err}") from None


def deep_merge(base: dict, extra: dict) -> dict:
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


MAX_SEEDS = 1000  # a grid trains variants x seeds runs; more seeds than this is a typo


GRID_FIX = "remove its format: line (ccn writes it into an experiment folder's copy of the grid)"


def load_grid(path: str | Path, overrides: list[str] | tuple = ()) -> Grid:
    """A grid file, or an experiment folder's grid.yaml (a grid record, ccn.records "grid")."""
    raw = read_record("grid", cfgmod.read_yaml(path), GRID_FIX, f"grid file {path}")
    unknown = set(raw) - {"base", "variants", "seeds", "reference", "primary"}
    if unknown:
        raise ConfigError(f"grid file {path}: unknown section(s) {sorted(map(str, unknown))}; allowed: base, variants, "
                          "seeds, reference, primary")
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"grid file {path}: base must be a mapping of config sections (data:, model:, ...), "
                          f"got {base!r}")
    top: dict = {}
    for item in overrides:  # --set applies to the base config; seeds= and reference= to the grid
        key, value = cfgmod.parse_override(item)
        if key in ("seeds", "reference", "primary"):
            top[key] = value
        else:
            base = deep_merge(base, cfgmod.nest({key: value}))
    seeds = _seeds(top.get("seeds", raw.get("seeds", [0, 1, 2])))
    variants = _variants(raw["variants"] if raw.get("variants") is not None else ["flat", "ccn", "random"])
    _refuse_seed_keys(base, variants)
    reference = top.get("reference", raw.get("reference", "flat"))
    if not isinstance(reference, str) or reference not in variants:
        raise ConfigError(f"reference variant {reference!r} is not in the grid's variants ({', '.join(variants)})")
    primary = _primary(top.get("primary", raw.get("primary")), variants, reference)
    spec = {"base": base, "variants": variants, "seeds": seeds, "reference": reference}
    grid = Grid(base, variants, seeds, reference, Path(path).stem, spec, primary)
    for variant in variants:  # check every config before any training starts
        _check_builtin_meaning(variant, grid.config_for(variant, seeds[0]))
    return grid


# What a built-in grouped variant means without saying it: the learned partition and step 3's plain loss,
# unless its name says otherwise (random, ccn-norm). A base, --set or override that changes them would
# make `ccn` random groups or `ccn` a ccn-norm, and the report compares by name.
IMPLIED_BY_BUILTIN = {"partition": "learned", "normalize_loss": False, "random_sizes": "learned"}


def _check_builtin_meaning(name: str, config: cfgmod.Config) -> None:
    builtin = builtin_variant(name)
    if builtin is None or builtin["method"]["name"] != "ccn":
        return
    for key, default in IMPLIED_BY_BUILTIN.items():
        meant, got = builtin["method"].get(key, default), getattr(config.method, key)
        if got != meant:
            raise ConfigError(f"variant {name!r} is built in with method.{key}={meant}, but the base config, --set "
                              f"or its overrides make it {got}: remove method.{key} from them, or give the variant "
                              f"a name of your own (such as my-{name}) with its overrides")


def _refuse_seed_keys(base: dict, variants: dict) -> None:
    """A run's seed is the grid's (`seeds:`): a `seed` in the base config, in a variant or given with
    --set would be overwritten for every run, so it is refused instead of silently ignored."""
    places = (["the base config (or --set seed=...)"] if "seed" in base else []) + [
        f"variant {name!r}" for name, overrides in variants.items() if "seed" in overrides]
    if places:
        raise ConfigError(f"{places[0]} sets seed, but every run's seed comes from the grid's seeds: list: remove it "
                          "and list the seeds under seeds: (or --set seeds=[0,1,2])")


def _primary(spec, variants: dict, reference: str) -> list:
    """`primary:` -> [[a, b], ...]: a variant name means [name, reference]; a pair is taken as given, and
    so is a record of an experiment folder's grid.yaml ({compare: [a, b], declared: ...}), so that the
    grid.yaml of a study reproduces it (the comparisons are declared anew in the new folder)."""
    if spec is None:
        return []
    example = f"such as [ccn, [ccn, k-1]] (a name is compared with {reference})"
    if not isinstance(spec, list):
        raise ConfigError(f"primary must be a list of variant names or [a, b] pairs {example}, got {spec!r}")
    pairs = []
    for item in spec:
        if isinstance(item, dict) and "compare" in item:  # an experiment folder's grid.yaml records it so
            item = item["compare"]
        if item == reference:
            raise ConfigError(f"primary: {item!r} is the reference, and a name alone is compared with the reference: "
                              f"name another variant, or a pair {example}")
        pair = [item, reference] if isinstance(item, str) else item
        if (not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(n, str) for n in pair)
                or pair[0] == pair[1]):
            raise ConfigError(f"primary: {item!r} is not a variant name or a pair of two different names {example}")
        missing = [n for n in pair if n not in variants]
        if missing:
            raise ConfigError(f"primary: {missing[0]!r} is not one of the grid's variants ({', '.join(variants)})")
        if pair in pairs or pair[::-1] in pairs:  # a - b and b - a are one test: counted twice, Holm would penalise it twice
            raise ConfigError(f"primary: {pair[0]} vs {pair[1]} is declared twice (in either order it is one "
                              "comparison): remove one")
        pairs.append(pair)
    return pairs


def _seeds(seeds) -> list:
    low, high = cfgmod.LIMITS["seed"].low, cfgmod.LIMITS["seed"].high
    if (not isinstance(seeds, list) or not seeds or len(seeds) > MAX_SEEDS
            or not all(isinstance(s, int) and not isinstance(s, bool) and low <= s <= high for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"seeds must be a list of 1 to {MAX_SEEDS} distinct whole numbers from {low} to {high} "
                          f"such as [0, 1, 2], got {seeds!r}")
    return seeds


def _variants(spec) -> dict:
    if isinstance(spec, list):
        if any(not isinstance(name, str) for name in spec) or len(set(spec)) != len(spec):
            raise ConfigError(f"variants must be a list of distinct names such as [flat, ccn, random], got {spec!r}")
        spec = {name: None for name in spec}
    if not isinstance(spec, dict):
        raise ConfigError("variants must be a list of names or a mapping name -> overrides")
    if not spec:
        raise ConfigError("variants is empty: name at least one, e.g. variants: [flat, ccn]")
    variants = {}
    for name, overrides in spec.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"variant name {name!r} may hold only letters, digits, '.', '_' and '-'")
        builtin = builtin_variant(name)
        if overrides is None and builtin is None:
            raise ConfigError(f"variant {name!r} is not built in ({BUILTIN_VARIANTS}): give its overrides")
        overrides = {} if overrides is None else overrides
        if not isinstance(overrides, dict):
            raise ConfigError(f"variant {name!r}: its overrides must be a mapping of config sections such as "
                              f"{{method: {{metric: l2}}}}, got {overrides!r}")
        _refuse_image_set_keys(name, overrides)
        variants[name] = overrides if builtin is None else _builtin_with(name, builtin, overrides)
    return variants


def _builtin_with(name: str, builtin: dict, overrides: dict) -> dict:
    """A built-in name keeps its meaning: the built-in variant's settings with the user's overrides
    merged on top (`flat: {train: {lr: 0.1}}` is flat at lr 0.1). The report reads the names (flat's
    groups, ccn vs random), so an override that changes what the name sets is refused, not obeyed."""
    changed = _changed_key(builtin, overrides)
    if changed is not None:
        key, fixed, given = changed
        raise ConfigError(f"variant {name!r} is built in ({_dotted(builtin)}), and its overrides set {key} to "
                          f"{given!r}: rename the variant (such as my-{name}) to give it settings of your own, "
                          f"or drop {key} from its overrides")
    return deep_merge(copy.deepcopy(builtin), copy.deepcopy(overrides))


def _changed_key(builtin: dict, overrides: dict, prefix: str = "") -> Optional[tuple]:
    """The first key the built-in sets whose value `overrides` changes: (dotted key, built-in value, given)."""
    for key, fixed in builtin.items():
        if key not in overrides:
            continue
        given = overrides[key]
        if isinstance(fixed, dict) and isinstance(given, dict):
            found = _changed_key(fixed, given, f"{prefix}{key}.")
            if found is not None:
                return found
        elif given != fixed or type(given) is not type(fixed):  # true is not 1
            return f"{prefix}{key}", fixed, given
    return None


def _dotted(nested: dict, prefix: str = "") -> str:
    """{method: {name: ccn, groups: 5}} -> 'method.name=ccn, method.groups=5'."""
    return ", ".join(_dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else f"{prefix}{k}={v}"
                     for k, v in nested.items())


# Config keys a variant may not override, because they change which images a run trains on or scores:
# the grid pairs the runs of one seed, and a paired difference is only a difference of treatments when
# both runs trained on the same images and scored the same ones (ours). Data keys that change how those
# same images are shown (image_size, crop, eval_crop, flip, flip_mode, crop_padding, pad_mode,
# crop_scale, crop_ratio, cutout, augment, randaugment_n/_m: a resolution or augmentation study is a
# treatment) and where images are kept (store, cache, workers, download) may differ between variants.
# Set the keys below in base:, for every variant alike. tests/test_grid_pairs.py makes every data key
# choose a side.
IMAGE_SET_KEYS = {
    "data": {
        "name": "another data set",
        "root": "another folder of images",
        "train_per_class": "another number of training images per class",
        "test_per_class": "another number of test images per class",
        "val_fraction": "another share of training images held out, scored instead of the test set",
        "include_background": "another set of classes (Caltech-101's background class)",
        "alphabets": "another set of classes (Omniglot's alphabets)",
        "train_drawers": "another split of Omniglot's drawers between training and test images",
        "num_classes": "another synthetic data set (its classes)",
        "num_groups": "another synthetic data set (its planted groups make other images)",
        "skip_bad_images": "unreadable images left out of one run's splits and not the other's",
        # not other images, but another truth: every variant's groups and mistakes are scored against one tree
        "wordnet": "another true hierarchy (the WordNet tree and groups every variant is scored against)",
        "wordnet_groups": "another cut of the true hierarchy (the coarse groups every variant is scored against)",
    },
    "method": {
        "probe_set": "another training set (probe_set=holdout keeps images out of training, for every method)",
        "holdout_fraction": "another number of images kept out of training (probe_set=holdout)",
    },
}


def _refuse_image_set_keys(name: str, overrides: dict) -> None:
    for section, keys in IMAGE_SET_KEYS.items():
        given = overrides.get(section)
        for key in (k for k in keys if isinstance(given, dict) and k in given):
            raise ConfigError(f"variant {name!r} sets {section}.{key}, which gives its runs {keys[key]}: the grid "
                              f"compares the runs of one seed as paired, and that needs the same images in every "
                              f"variant; set {section}.{key} in base: (for every variant), or run another grid")


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
            saved = read_record("grid", saved, "restore it to continue the grid, or choose another --out", path)
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
    text = yaml.safe_dump(stamp("grid", {**grid.raw, **({"primary": records} if records else {})}), sort_keys=False)
    if widened:
        return text  # written by the caller once every run has finished
    if not path.exists() or path.read_text() != text:
        atomic_write(path, lambda tmp: tmp.write_text(text))
    return None


_GRID_OUTPUTS = GRID_OUTPUTS  # what a grid writes beside runs/ (ccn.runs, where export also reads it)


def _refuse_foreign_folder(out: Path, grid: Grid) -> None:
    """A folder without grid.yaml may hold other files (they are left alone), or this grid's runs
    whose grid.yaml was lost (_check_started_runs checks that they are this grid's; its report is
    then rewritten). Otherwise it must not hold files the grid would overwrite (a report, a summary,
    figures), nor be a run folder of `ccn train`."""
    if not out.is_dir() or any((out / "runs" / f"{variant}-s{seed}" / "config.yaml").is_file()
                               for variant in grid.variants for seed in grid.seeds):
        return
    clashes = sorted(name for name in set(_GRID_OUTPUTS + RUN_FILES) if (out / name).exists())
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
