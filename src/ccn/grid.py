"""A grid file: the variants x seeds of a study, each variant a config (no torch here).

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

`ccn experiment` (ccn.experiment) runs it; ccn.report summarises a finished one.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ccn import config as cfgmod
from ccn.errors import ConfigError

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


def load_grid(path: str | Path, overrides: list[str] | tuple = ()) -> Grid:
    raw = cfgmod.read_yaml(path)
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
