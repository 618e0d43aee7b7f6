"""The statistics of a grid's runs, from their numbers alone (no files, no text, no torch): paired
differences over seeds with t intervals, Holm's adjustment within each family of comparisons, and
the scores against the data set's true tree. ccn.report reads a finished grid and writes them out."""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import stats


def paired_difference(values: list[float], reference: list[float]) -> dict:
    """Mean of the per-seed differences with a 95 % t interval over seeds and the paired t-test's
    two-sided p-value (None when one seed, or when every seed gives the same difference)."""
    diffs = np.asarray(values) - np.asarray(reference)
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return {"diffs": diffs.tolist(), "diff_mean": mean, "ci95": None, "p": None, "verdict": "one seed: no interval"}
    sem = diffs.std(ddof=1) / np.sqrt(len(diffs))
    half = float(stats.t.ppf(0.975, len(diffs) - 1) * sem)
    low, high = mean - half, mean + half
    p_value = float(2 * stats.t.sf(abs(mean) / sem, len(diffs) - 1)) if sem > 0 else (0.0 if mean != 0 else 1.0)
    return {"diffs": diffs.tolist(), "diff_mean": mean, "ci95": [low, high], "p": p_value,
            "verdict": _verdict(mean, low > 0 or high < 0)}


def _verdict(mean: float, significant: bool) -> str:
    return ("better" if mean > 0 else "worse") if significant else "indistinguishable"


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: family-wise error at most alpha when each adjusted p is
    compared with alpha, for any dependence between the tests."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def add_holm_verdicts(paired: dict, alpha: float = 0.05) -> None:
    """Beside each unadjusted interval, the verdict after Holm's adjustment over the comparisons of
    `paired`, one family: all the variants compared with the reference; the referee controls
    (X vs X-random); the pre-planned comparisons."""
    tested = [name for name, p in paired.items() if p["p"] is not None]
    for name, adjusted in zip(tested, holm_adjust([paired[name]["p"] for name in tested])):
        paired[name]["p_holm"] = adjusted
        paired[name]["verdict_holm"] = _verdict(paired[name]["diff_mean"], adjusted < alpha)


def comparisons(variants: dict, reference: str, primary_records: list, unpaired=lambda a, b: None) -> dict:
    """The three families of paired comparisons, each with its own Holm adjustment:
    `paired` (every variant against the reference), `controls` (the referee's X vs X-random: do the
    learned groups matter beyond the head structure?) and `primary` (the comparisons declared
    before any run; those added later are listed there too, marked, and not adjusted with them).

    A comparison whose runs did not score the same images (`unpaired(a, b)` says why) is not
    computed in any family: it is listed in `not_comparable` with the reason, outside Holm's families."""
    top1 = {name: v["top1"] for name, v in variants.items()}
    not_comparable: list = []

    def comparable(a: str, b: str, family: str, record: Optional[dict] = None) -> bool:
        why = unpaired(a, b)
        if why is not None:
            not_comparable.append({**(record or {"compare": [a, b]}), "family": family, "why": why})
        return why is None

    paired = {name: paired_difference(values, top1[reference]) for name, values in top1.items()
              if name != reference and comparable(name, reference, "paired")}
    add_holm_verdicts(paired)
    controls = {key: paired_difference(top1[a], top1[b]) for key, (a, b) in control_pairs(list(variants)).items()
                if comparable(a, b, "controls")}
    add_holm_verdicts(controls)
    primary = [{**record, **paired_difference(top1[record["compare"][0]], top1[record["compare"][1]])}
               for record in primary_records if all(n in top1 for n in record["compare"])
               and comparable(*record["compare"], "primary", record)]
    planned = {str(i): p for i, p in enumerate(primary) if p["before_any_run"]}
    add_holm_verdicts(planned)
    return {"paired": paired, "controls": controls, "primary": primary, "not_comparable": not_comparable}


def control_pairs(variants: list[str]) -> dict[str, tuple[str, str]]:
    """The referee's test for each partition with a random control of the same sizes: ccn against
    random (ccn-norm against random-norm), and any X against X-random (balanced against
    balanced-random, ...)."""
    pairs = {}
    for learned, shuffled in (("ccn", "random"), ("ccn-norm", "random-norm")):
        if learned in variants and shuffled in variants:
            pairs[f"{learned}_vs_{shuffled}"] = (learned, shuffled)
    for name in variants:
        base, norm = (name[:-len("-norm")], "-norm") if name.endswith("-norm") else (name, "")
        shuffled = f"{base}-random{norm}"  # oracle vs oracle-random, oracle-norm vs oracle-random-norm
        if shuffled in variants and shuffled != name:
            pairs[f"{name}_vs_{shuffled}"] = (name, shuffled)
    return pairs


# What the two runs of one seed must agree on (results.json) for their difference to be paired: the
# split scored and the images each split held. A variant may not set the keys that change them
# (grid.IMAGE_SET_KEYS); this is the report's own check, for what the grid file cannot show
# (a data folder that changed between two runs, a results.json from another grid).
def scored_images(results: dict) -> dict:
    """The split a run scored and the images of its splits (eval_set is absent from runs that predate
    it: they scored the test set)."""
    return {"eval_set": results.get("eval_set", "test"), "test_images": results["test_images"],
            "train_images": results["train_images"]}


def unpaired_runs(seeds: list, a: str, runs_a: list[dict], b: str, runs_b: list[dict]) -> Optional[str]:
    """Why variants a and b cannot be compared as paired ("seed 0: eval_set 'validation' (a), 'test' (b)"),
    or None when every seed's two runs scored the same images."""
    for seed, ra, rb in zip(seeds, runs_a, runs_b):
        facts_a, facts_b = scored_images(ra), scored_images(rb)
        differ = [f"{key} {facts_a[key]!r} ({a}), {facts_b[key]!r} ({b})"
                  for key in facts_a if facts_a[key] != facts_b[key]]
        if differ:
            return f"seed {seed}: {'; '.join(differ)}"
    return None


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


TRUTH_SCORES = ("coarse_top1", "mistake_severity")  # ccn.hierarchy.truth: scored against the true tree


def truth_scores(results: list[dict]) -> dict:
    """Per seed and mean of the scores against the data set's true tree, when every run has them
    (none: a data set without coarse labels, or runs from before they were recorded)."""
    if not all("truth" in r for r in results):
        return {}
    entry = {"tree": results[0]["truth"]["tree"], "coarse_groups": results[0]["truth"]["coarse_groups"]}
    for key in TRUTH_SCORES:
        values = [r["truth"][key] for r in results]
        entry[key] = values
        if None not in values:
            entry[f"{key}_mean"], entry[f"{key}_std"] = mean_std(values)
    return entry


def truth_differences(variants: dict, reference: str) -> dict:
    """Paired differences from the reference in coarse top-1 and mistake severity (descriptive:
    unadjusted intervals, no family; the accuracy comparisons above are the tests)."""
    ref = variants[reference]
    result = {}
    for name, v in variants.items():
        if name == reference:
            continue
        diffs = {key: paired_difference(v[key], ref[key]) for key in TRUTH_SCORES
                 if f"{key}_mean" in v and f"{key}_mean" in ref}
        if diffs:
            result[name] = diffs
    return result
