"""A finished experiment grid read back and written out: summary.json (its numbers, with the statistics
of ccn.grid_statistics), report.md and the figures. No torch: a grid is reported without the model stack."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Optional

import numpy as np

from ccn.errors import CCNError
from ccn.files import atomic_write, check_replaceable, write_json
from ccn.grid_statistics import (comparisons, control_pairs, mean_std, scored_images, truth_differences, truth_scores,
                                 unpaired_runs)
from ccn.hierarchy.tree import Hierarchy, agreement
from ccn.hierarchy.truth import partition_shape
from ccn.plots import save_figure
from ccn.runfiles import read_results


def summarise(grid, out: Path) -> dict:
    """summary.json's content, from the results of every run of the grid."""
    variants, runs = {}, {}
    for name in grid.variants:
        results = [read_results(out / "runs" / f"{name}-s{seed}") for seed in grid.seeds]
        _require_alike(out, name, grid.seeds, results, runs)
        runs[name] = results
        top1 = [r["top1"] for r in results]
        top5 = [r["top5"] for r in results]
        entry = {"top1": top1, "top5": top5}
        entry["top1_mean"], entry["top1_std"] = mean_std(top1)
        entry["top5_mean"], entry["top5_std"] = mean_std(top5)
        entry["rules"] = {rule: mean_std([r["rules"][rule]["top1"] for r in results])[0]
                          for rule in results[0]["rules"]}
        for key in ("group_acc", "within_acc", "balanced_top1"):
            if key in results[0]:
                entry[f"{key}_mean"] = mean_std([r[key] for r in results])[0]
        entry["wall_time_s"] = float(sum(r["wall_time_s"] for r in results))
        entry.update(truth_scores(results))
        variants[name] = entry
    return {"reference": grid.reference, "seeds": grid.seeds, "variants": variants,
            **comparisons(variants, grid.reference, getattr(grid, "primary_records", []),
                          lambda a, b: unpaired_runs(grid.seeds, a, runs[a], b, runs[b])),
            "truth": truth_differences(variants, grid.reference),
            "groups": group_statistics(grid, out, runs), "partition_mismatches": partition_mismatches(grid, out, runs),
            "facts": _facts(runs),
            "code": code_versions(grid, runs)}


def code_versions(grid, runs: dict) -> list:
    """Which code produced which runs: [{"code": results.json's `code` (None: not recorded), "runs": [...]}],
    one entry per distinct version, in the order first met. More than one entry means the grid was
    run (or widened, or resumed) with different code."""
    versions: list = []
    for name, results in runs.items():
        for seed, r in zip(grid.seeds, results):
            codes = [r.get("code")] + ([r["code_at_start"]] if "code_at_start" in r else [])
            for code in codes:
                entry = next((v for v in versions if v["code"] == code), None)
                if entry is None:
                    entry = {"code": code, "runs": []}
                    versions.append(entry)
                if f"{name}-s{seed}" not in entry["runs"]:
                    entry["runs"].append(f"{name}-s{seed}")
    return versions


def _require_alike(out: Path, name: str, seeds: list, results: list[dict], earlier: dict) -> None:
    """Every run of a grid must score the same classes, and every seed of a variant the same rules:
    a results.json from elsewhere would otherwise be averaged in silently (or fail half-way)."""
    first = next(iter(earlier.values()))[0] if earlier else results[0]
    for seed, r in zip(seeds, results):
        if r["num_classes"] != first["num_classes"] or set(r["rules"]) != set(results[0]["rules"]):
            raise CCNError(f"{out / 'runs' / f'{name}-s{seed}' / 'results.json'} scores other classes or rules than "
                           "the grid's other runs: it is not this grid's run; delete that run folder and rerun to "
                           "train it again")


def _hierarchy(out: Path, name: str, seed: int) -> Optional[Hierarchy]:
    path = out / "runs" / f"{name}-s{seed}" / "hierarchy.json"
    return Hierarchy.load(path) if path.exists() else None


def group_statistics(grid, out: Path, runs: dict) -> dict:
    """Per variant with groups: ARI/NMI against coarse labels (if any) and ARI between seeds (stability)."""
    result = {}
    for name in grid.variants:
        hierarchies = [_hierarchy(out, name, seed) for seed in grid.seeds]
        if any(h is None for h in hierarchies):
            continue
        entry = {"sizes": [sorted((len(g) for g in h.groups), reverse=True) for h in hierarchies]}
        entry["largest_over_mean"] = [max(s) * len(s) / sum(s) for s in entry["sizes"]]  # 1.0: perfectly balanced
        entry["smallest_over_mean"] = [min(s) * len(s) / sum(s) for s in entry["sizes"]]
        entry["shape"] = [partition_shape(s) for s in entry["sizes"]]
        if "coarse_ari" in hierarchies[0].how:
            entry["coarse_ari"] = [h.how["coarse_ari"] for h in hierarchies]
            entry["coarse_nmi"] = [h.how["coarse_nmi"] for h in hierarchies]
            if all("coarse_random" in h.how for h in hierarchies):  # random groups of the same sizes
                entry["coarse_random_ari"] = [h.how["coarse_random"]["ari_mean"] for h in hierarchies]
                entry["coarse_random_nmi"] = [h.how["coarse_random"]["nmi_mean"] for h in hierarchies]
        pairs = [agreement(a.groups, b.groups, a.num_classes)["ari"] for a, b in itertools.combinations(hierarchies, 2)]
        entry["seed_ari"] = pairs
        entry["seed_ari_mean"] = float(np.mean(pairs)) if pairs else None
        result[name] = entry
    return result


# Keys that change what a grouped run does after its probe epoch but not the probe itself: two
# variants that differ only in these learn the same partition from the same seed (random draws
# groups of the learned sizes, the others act on the later training or the scoring). The recursion's
# keys (depth, ...) are not here: a depth-2 run's groups are the split ones, of other sizes.
_AFTER_PROBE_KEYS = ("partition", "normalize_loss", "flat_weight", "init_from_flat", "inference", "blend_weight")


def _probe_settings(grid, name: str) -> Optional[dict]:
    """Everything that determines variant `name`'s probe epoch and partition sizes (None: no learned
    partition to compare, as for flat, oracle or a partition file)."""
    config = grid.config_for(name, 0).to_dict()
    method = config["method"]
    if (method["name"] != "ccn" or method["partition"] not in ("learned", "random")
            or method.get("random_sizes") == "oracle"):  # oracle-random: sizes from the coarse labels
        return None
    config["method"] = {k: v for k, v in method.items() if k not in _AFTER_PROBE_KEYS}
    return config


def partition_twins(grid) -> list[tuple[str, str]]:
    """Pairs of grouped variants whose probe epochs are the same computation for a seed (ccn and
    random, ccn and ccn-norm, k-5 and k-5-random): their partitions should have the same sizes."""
    settings = {name: _probe_settings(grid, name) for name in grid.variants}
    grouped = [name for name, s in settings.items() if s is not None]
    return [(a, b) for a, b in itertools.combinations(grouped, 2) if settings[a] == settings[b]]


def partition_mismatches(grid, out: Path, runs: dict) -> list[dict]:
    """Seeds where two partition twins learned groups of different sizes. The probe epoch is the same
    computation, but its floating point depends on the number of CPU threads (the summation order
    of the kernels), and one epoch of training amplifies that: such a seed compares two partitions,
    not one partition with two treatments. Each entry names the probe's thread count (None: a run
    from before it was recorded) and the machine line of results.json (the threads that finished
    the run, which differ from the probe's when it resumed with another count)."""
    mismatches = []
    for a, b in partition_twins(grid):
        for i, seed in enumerate(grid.seeds):
            ha, hb = _hierarchy(out, a, seed), _hierarchy(out, b, seed)
            if ha is None or hb is None:
                continue
            sizes = [sorted((len(g) for g in h.groups), reverse=True) for h in (ha, hb)]
            if sizes[0] != sizes[1]:
                mismatches.append({"variants": [a, b], "seed": seed, "sizes": sizes,
                                   "probe_threads": [h.how.get("probe_cpu_threads") for h in (ha, hb)],
                                   "machines": [runs[a][i]["machine"], runs[b][i]["machine"]]})
    return mismatches


def _facts(runs: dict) -> dict:
    first = next(iter(runs.values()))[0]
    epochs = [r["epochs"] for rs in runs.values() for r in rs]
    return {"data": first["data"], "model": first["model"], "epochs": first["epochs"],
            "epochs_range": [min(epochs), max(epochs)],  # a budget grid's variants differ in epochs
            "train_images": first["train_images"], "test_images": first["test_images"],
            "eval_set": first.get("eval_set", "test"),
            "same_images": all(scored_images(r) == scored_images(first) for rs in runs.values() for r in rs),
            "num_classes": first["num_classes"], "machine": first["machine"], "device": first["device"],
            # the runs' own torch and dates, not the renderer's (a report may be rendered long after)
            "torch": ", ".join(sorted({r.get("torch", "unknown") for rs in runs.values() for r in rs})),
            "date": _date_range([r.get("finished") for rs in runs.values() for r in rs]),
            "total_wall_time_s": float(sum(r["wall_time_s"] for rs in runs.values() for r in rs))}


def _date_range(finished: list) -> str:
    """The days the runs finished (results.json 'finished'; runs from before it was recorded say so)."""
    days = sorted({f[:10] for f in finished if isinstance(f, str)})
    missing = sum(1 for f in finished if not isinstance(f, str))
    text = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}" if days else ""
    unknown = f"{missing} run(s) without a recorded date" if missing else ""
    return "; ".join(t for t in (f"finished {text}" if text else "", unknown) if t)


# ---------------------------------------------------------------- report.md and figures


def write_report(grid, out: Path, seconds: float) -> dict:
    out = Path(out)
    for name in ("summary.json", "report.md"):  # a FIFO or link there is not replaced by a file
        check_replaceable(out / name, "experiment file", "remove it, or give ccn experiment another --out")
    summary = summarise(grid, out)
    write_json(out / "summary.json", summary)
    figures = write_figures(grid, out, summary)
    report = render_report(grid, summary, figures, out)
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(report))
    return summary


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


_VERDICT_WORDS = {"better": "better than", "worse": "worse than", "indistinguishable": "indistinguishable from"}


def _sentence(name: str, reference: str, p: dict, family: str) -> str:
    """One comparison in words. The verdict is Holm's over `family` when the comparison has one;
    otherwise it is the unadjusted one, and the sentence says so."""
    if p["ci95"] is None:
        return f"- **{name}** vs {reference}: {100 * p['diff_mean']:+.2f} points with one seed; no interval, no claim."
    low, high = (100 * v for v in p["ci95"])
    numbers = (f"paired difference {100 * p['diff_mean']:+.2f} points, 95 % interval [{low:+.2f}, {high:+.2f}] "
               f"over {len(p['diffs'])} seeds")
    if "verdict_holm" in p:
        unadjusted = "" if p["verdict"] == p["verdict_holm"] else f"; unadjusted: {p['verdict']}, p {p['p']:.3f}"
        return (f"- **{name}** is {_VERDICT_WORDS[p['verdict_holm']]} **{reference}** after Holm's adjustment over "
                f"{family} (adjusted p {p['p_holm']:.3f}): {numbers}{unadjusted}.")
    return (f"- **{name}** is {_VERDICT_WORDS[p['verdict']]} **{reference}** (unadjusted, 95 %; p {p['p']:.3f}): "
            f"{numbers}.")


_EVAL_SET_WORDS = {"test": "test set", "validation": "validation split of the training images (data.val_fraction)"}


def render_report(grid, summary: dict, figures: dict, out: Path) -> str:
    f, ref = summary["facts"], summary["reference"]
    one_seed = len(summary["seeds"]) == 1
    low, high = f.get("epochs_range", [f["epochs"]] * 2)
    epochs = f"{low}" if low == high else f"{low}-{high} (by variant)"
    lines = [
        f"# Experiment `{grid.name}`: {f['data']}, {f['model']}, {epochs} epochs, seeds {summary['seeds']}",
        "",
        f"- Data: {f['data']} ({f['num_classes']} classes, {f['train_images']} training / {f['test_images']} "
        f"{f['eval_set']} images; scored on the {_EVAL_SET_WORDS[f['eval_set']]}"
        f"{'' if f.get('same_images', True) else ' in the first run; other runs had other images, see below'}). "
        f"Backbone: {f['model']}. "
        f"Budget: {epochs} epochs per run, probe epochs included.",
        f"- Machine: {f['machine']}, device {f['device']}, torch {f['torch']}, {f['date']}. "
        f"Wall time of all runs (whole runs in their processes, loading and scoring included): "
        f"{f['total_wall_time_s'] / 60:.1f} min.",
        *_method_lines(ref, one_seed),
        "| variant | top-1 % (mean +- std) | top-5 % | balanced top-1 % | per seed top-1 % | diff vs " + ref
        + " (points) | 95 % interval | Holm-adjusted p | verdict (Holm) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, v in summary["variants"].items():
        p = summary["paired"].get(name)
        diff = f"{100 * p['diff_mean']:+.2f}" if p else "reference" if name == ref else "not comparable"
        ci = f"[{100 * p['ci95'][0]:+.2f}, {100 * p['ci95'][1]:+.2f}]" if p and p["ci95"] else "-"
        holm = f"{p['p_holm']:.3f} | {p['verdict_holm']}" if p and "p_holm" in p else "- | -"
        balanced = _pct(v["balanced_top1_mean"]) if "balanced_top1_mean" in v else "-"
        lines.append(f"| {name} | {_pct(v['top1_mean'])} +- {_pct(v['top1_std'])} | {_pct(v['top5_mean'])} | "
                     f"{balanced} | {', '.join(_pct(x) for x in v['top1'])} | {diff} | {ci} | {holm} |")
    lines += ["", "## What the comparisons say", ""] + _not_comparable_lines(summary) + _primary_lines(summary)
    n_ref = sum(1 for p in summary["paired"].values() if "p_holm" in p)
    lines += [f"Against {ref} (one seed per variant: no interval and no test; the differences only describe):"
              if one_seed else f"Against {ref} (Holm over the {_count(n_ref, 'variant')} compared with it):", ""]
    lines += [_sentence(name, ref, p, f"the {_count(n_ref, 'comparison')} with {ref}")
              for name, p in summary["paired"].items()]
    pairs = [(key, a, b) for key, (a, b) in control_pairs(list(summary["variants"])).items() if key in summary["controls"]]
    if pairs:
        family = f"the {len(pairs)} referee controls" if len(pairs) > 1 else "the one referee control"
        lines += ["", "The referee's controls, learned groups against random groups of the same sizes (do the groups "
                  f"matter beyond the head structure? Holm over {family}, their own family):", ""]
        lines += [_sentence(a, b, summary["controls"][key], family) for key, a, b in pairs]
    lines += [""] + _code_lines(summary)
    lines += _rule_lines(summary) + _truth_lines(summary) + _group_lines(grid, summary, out) + _mismatch_lines(summary)
    lines += ["", "## Figures", ""] + [f"![{title}]({name})" for title, name in figures.items()]
    lines += ["", "Each run's folder (config, metrics, results, weights) is `runs/<variant>-s<seed>/` beside the "
                  "experiment's summary.json.", ""]
    return "\n".join(lines)


def _method_lines(reference: str, one_seed: bool) -> list[str]:
    """How the differences and verdicts below were obtained (with one seed: that there are none)."""
    if one_seed:
        return ["- One seed: every variant starts from the same initial weights and data order, so the "
                f"differences from {reference} are paired, but they have no interval and no verdict is drawn.", ""]
    return ["- The same seed gives every variant the same initial weights and data order, so differences are paired;"
            " intervals are Student-t over seeds.", "",
            "- Verdicts: the sentences below use Holm's adjustment (family-wise error 5 %) within each family: the "
            f"variants compared with {reference}; the referee controls (X vs X-random); the comparisons declared "
            "before the first run (`primary:` in grid.yaml), if any. A sentence that quotes an unadjusted verdict "
            "says so. The table gives the unadjusted 95 % interval and the Holm verdict against the reference.", ""]


def _rule_lines(summary: dict) -> list[str]:
    """Top-1 of every inference rule, for the variants with groups (none: no table)."""
    grouped = [(name, v) for name, v in summary["variants"].items() if "soft" in v["rules"]]
    if not grouped:
        return []
    lines = ["", "Top-1 % of every inference rule (mean over seeds) for the variants with groups. Group and "
             "within-group accuracy depend on the partition and are not comparable between variants with "
             "different partitions (a one-class group has within-group accuracy 1 by construction); compare "
             "top-1, top-5 and balanced top-1 instead.", "",
             "| variant | " + " | ".join(("soft", "hard", "flat", "blend")) + " | group acc | within acc |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, v in grouped:
        lines.append(f"| {name} | " + " | ".join(_pct(v["rules"][r]) for r in ("soft", "hard", "flat", "blend"))
                     + f" | {_pct(v['group_acc_mean'])} | {_pct(v['within_acc_mean'])} |")
    return lines


def _truth_lines(summary: dict) -> list[str]:
    """Every variant scored against the data set's true tree, and how close each partition came to
    the true groups beside random groups of the same sizes (none: no section)."""
    scored = [(name, v) for name, v in summary["variants"].items() if "coarse_top1" in v]
    if not scored:
        return []
    first = scored[0][1]
    ref = summary["reference"]
    lines = ["", "## Against the true hierarchy", "",
             f"The data set's own tree ({first['tree']}, {first['coarse_groups']} coarse groups). Coarse top-1: the "
             "predicted class lies in the true class's coarse group. Mistake severity: over the wrong predictions, "
             "the mean number of steps up from the true class to the lowest common ancestor with the predicted one "
             "(lower is a milder mistake; 'Making Better Mistakes'). Differences from "
             f"{ref} are paired by seed, " + ("with one seed, without an interval." if len(summary["seeds"]) == 1 else
                                              "with unadjusted 95 % intervals (descriptive: they are in no Holm family)."),
             "", f"| variant | coarse top-1 % (mean +- std) | diff vs {ref} (points) | mistake severity (mean +- std) "
             f"| diff vs {ref} |", "| --- | --- | --- | --- | --- |"]
    for name, v in scored:
        diffs = summary.get("truth", {}).get(name, {})
        severity = (f"{v['mistake_severity_mean']:.3f} +- {v['mistake_severity_std']:.3f}"
                    if "mistake_severity_mean" in v else "-")
        lines.append(f"| {name} | {_pct(v['coarse_top1_mean'])} +- {_pct(v['coarse_top1_std'])} | "
                     f"{_interval(diffs.get('coarse_top1'), 100, '+.2f')} | {severity} | "
                     f"{_interval(diffs.get('mistake_severity'), 1, '+.3f')} |")
    agreeing = [(name, g) for name, g in summary["groups"].items() if "coarse_random_ari" in g]
    if agreeing:
        lines += ["", "How close each partition comes to the true groups (mean over seeds), beside random partitions "
                  "of the same sizes (20 draws each): ARI is 0 for chance by construction, NMI is not.", "",
                  "| variant | ARI | ARI, random same sizes | NMI | NMI, random same sizes | shape (first seed) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, g in agreeing:
            lines.append(f"| {name} | {np.mean(g['coarse_ari']):.3f} | {np.mean(g['coarse_random_ari']):.3f} | "
                         f"{np.mean(g['coarse_nmi']):.3f} | {np.mean(g['coarse_random_nmi']):.3f} | "
                         f"{g['shape'][0]['shape']} |")
    return lines


def _interval(p: Optional[dict], scale: float, fmt: str) -> str:
    if p is None:
        return "-"
    if p["ci95"] is None:
        return f"{scale * p['diff_mean']:{fmt}}"
    return f"{scale * p['diff_mean']:{fmt}} [{scale * p['ci95'][0]:{fmt}}, {scale * p['ci95'][1]:{fmt}}]"


def _group_lines(grid, summary: dict, out: Path) -> list[str]:
    """The groups of every grouped variant, and ccn's learned groups by name (none: no section)."""
    lines = []
    for name, g in summary["groups"].items():
        stable = f"{g['seed_ari_mean']:.2f}" if g["seed_ari_mean"] is not None else "-"
        coarse = f", ARI against coarse labels {np.mean(g['coarse_ari']):.2f}" if "coarse_ari" in g else ""
        shape = f" ({g['shape'][0]['shape']})" if "shape" in g else ""
        sizes = g["sizes"][0] if len(g["sizes"][0]) <= 30 else f"{g['sizes'][0][:30]} and {len(g['sizes'][0]) - 30} more"
        lines.append(f"- {name}: group sizes (seed {summary['seeds'][0]}) {sizes}{shape}, largest / mean size "
                     f"{g['largest_over_mean'][0]:.2f}, smallest / mean {g['smallest_over_mean'][0]:.2f}; mean ARI "
                     f"between the groups of different seeds {stable}{coarse}.")
    h = _hierarchy(out, "ccn", summary["seeds"][0]) if "ccn" in grid.variants else None
    if h is not None:
        lines += ["", f"Learned groups of `ccn`, seed {summary['seeds'][0]}:", ""]
        lines += [f"{k + 1}. {', '.join(names)}" for k, names in enumerate(h.named_groups())]
    return ["", "## Groups", ""] + lines if lines else []


def _mismatch_lines(summary: dict) -> list[str]:
    """The seeds whose partition twins learned different group sizes (none: no section)."""
    mismatches = summary.get("partition_mismatches") or []
    if not mismatches:
        return []
    lines = ["", "## Partitions that should agree and do not", "",
             "These variants run the same probe epoch for a seed, so they should learn groups of the same sizes. "
             "For the seeds below they did not, so for them the paired difference also compares two partitions. "
             "The probe's floating point depends on the number of CPU threads, and one epoch of training amplifies "
             "the difference: where the thread counts below differ, run a grid with one count throughout "
             "(OMP_NUM_THREADS); where they agree, look for another source of nondeterminism (GPU kernels, an "
             "epoch before the probe resumed on another count).", ""]
    for m in mismatches:
        sides = [f"{name} {sizes[:6]}{' ...' if len(sizes) > 6 else ''} ({_threads_words(threads, machine)})"
                 for name, sizes, threads, machine in zip(m["variants"], m["sizes"], m.get("probe_threads", [None] * 2),
                                                          m["machines"])]
        lines.append(f"- seed {m['seed']}: {sides[0]} vs {sides[1]}")
    return lines


def _threads_words(probe_threads: Optional[int], machine: str) -> str:
    if probe_threads is None:
        return f"probe threads not recorded; finished on {machine}"
    return f"probe on {probe_threads} thread{'' if probe_threads == 1 else 's'}"


_FAMILY_WORDS = {"paired": "against the reference", "controls": "a referee control", "primary": "declared primary"}


def _not_comparable_lines(summary: dict) -> list:
    """The comparisons not made because their runs scored or trained on other images (none: no lines)."""
    skipped = summary.get("not_comparable") or []
    if not skipped:
        return []
    lines = ["Not comparable, so not computed (their runs of one seed trained on or scored other images, so a "
             "difference would not be one of methods; they are left out of every Holm family):", ""]
    lines += [f"- **{s['compare'][0]}** vs {s['compare'][1]} ({_FAMILY_WORDS[s['family']]}): {s['why']}."
              for s in skipped]
    return lines + [""]


def _primary_lines(summary: dict) -> list:
    """The pre-planned comparisons first (Holm over them alone), then any primary added later."""
    primary = summary.get("primary") or []
    planned = [p for p in primary if p["before_any_run"]]
    later = [p for p in primary if not p["before_any_run"]]
    lines = []
    if planned:
        lines += [f"Pre-planned comparisons (declared in grid.yaml before the first run, at {planned[0]['declared']}; "
                  f"Holm over these {len(planned)}):", ""]
        lines += [_sentence(p["compare"][0], p["compare"][1], p, f"the {len(planned)} pre-planned comparisons")
                  for p in planned]
        lines.append("")
    if later:
        lines += ["Declared as primary after runs had started (so not pre-planned; unadjusted here, see their "
                  "family below for the adjusted verdict):", ""]
        lines += [_sentence(p["compare"][0], p["compare"][1], {k: v for k, v in p.items() if "holm" not in k}, "")
                  + f" Declared {p['declared']}." for p in later]
        lines.append("")
    if not primary and not any(s["family"] == "primary" for s in summary.get("not_comparable") or []):
        lines += ["No comparison was declared before the runs (`primary:` in the grid file), so none is pre-planned.", ""]
    return lines


def _code_lines(summary: dict) -> list:
    """Provenance: one line when one code version made every run, else which version made which runs."""
    from ccn.provenance import describe_code
    versions = summary.get("code") or []
    if not versions:
        return ["Code: not recorded (these runs predate the record of code versions)."]
    if len(versions) == 1:
        return [f"Code: every run was produced by {describe_code(versions[0]['code'])}."]
    lines = [f"Code: the runs were produced by {len(versions)} code versions (the code changed while the grid ran, "
             "or the grid was widened or resumed with other code):", ""]
    return lines + [f"- {describe_code(v['code'])}: {', '.join(v['runs'])}" for v in versions]


def write_figures(grid, out: Path, summary: dict) -> dict:
    from ccn.plots import _pyplot, dendrogram_png, heatmap_png

    plt = _pyplot()
    intervals = "(one seed: no interval)" if len(summary["seeds"]) == 1 else "with 95 % intervals"
    figures = {f"paired difference from {summary['reference']} {intervals}": forest_png(summary, out, plt).name}
    h = _hierarchy(out, "ccn", grid.seeds[0]) if "ccn" in grid.variants else None
    if h is not None and h.merges is not None:
        figures["dendrogram of the learned groups"] = dendrogram_png(h, out / "dendrogram.png").name
        run_dir = out / "runs" / f"ccn-s{grid.seeds[0]}"
        figures["class distances"] = heatmap_png(h.with_distances(run_dir), out / "distances.png").name
        figures["accuracy per learned group"] = _per_group_png(grid, out, h, plt).name
    return figures


def forest_png(summary: dict, out: Path, plt) -> Path:
    """The report's first figure: each variant's paired difference from the reference (points of
    top-1) with its unadjusted 95 % interval, filled where it survives Holm's adjustment, and the
    per-seed differences as dots; the zero line is the reference. Replaces bars of absolute accuracy
    on a cut axis, which made a 1-point gap look like a third of a bar."""
    names = [n for n, p in summary["paired"].items()]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    for row, name in enumerate(reversed(names)):
        p = summary["paired"][name]
        mean = 100 * p["diff_mean"]
        holm = p.get("verdict_holm", "indistinguishable") != "indistinguishable"
        if p["ci95"] is not None:
            ax.plot([100 * p["ci95"][0], 100 * p["ci95"][1]], [row, row], color="black", lw=1.5)
        ax.plot([mean], [row], "o", color="black", markerfacecolor="black" if holm else "white", markersize=7)
        ax.scatter([100 * d for d in p["diffs"]], [row + 0.2] * len(p["diffs"]), s=6, color="tab:gray")
    ax.axvline(0, color="tab:red", lw=1)
    ax.set_yticks(range(len(names)), list(reversed(names)))
    ax.set_xlabel(f"top-1 minus {summary['reference']} (points)\n"
                  "mean and 95 % interval; grey: seeds; filled: differs after Holm")
    fig.tight_layout()
    return save_figure(fig, out / "differences.png")


def _per_group_png(grid, out: Path, h: Hierarchy, plt) -> Path:
    """Top-1 within each learned group (classes of `ccn` seed 0) for every variant, mean over seeds."""
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(h.groups) * len(grid.variants) / 2), 4))
    width = 0.8 / len(grid.variants)
    for i, name in enumerate(grid.variants):
        per_seed = [read_results(out / "runs" / f"{name}-s{s}")["per_class_top1"] for s in grid.seeds]
        per_class = np.nanmean(np.array(per_seed, dtype=float), axis=0)  # None (no test image) -> nan
        values = [100 * float(np.nanmean(per_class[g])) for g in h.groups]
        ax.bar(np.arange(len(h.groups)) + i * width, values, width, label=name)
    ax.set_xticks(np.arange(len(h.groups)) + 0.4 - width / 2, [f"g{k + 1}" for k in range(len(h.groups))])
    ax.set_ylabel("top-1 % of the group's classes")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out / "per_group.png")
