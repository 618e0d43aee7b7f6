"""Summaries of an experiment grid: statistics (summary.json), a report (report.md) and figures."""

from __future__ import annotations

import datetime
import itertools
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from scipy import stats

from ccn.errors import CCNError
from ccn.hierarchy import Hierarchy, agreement
from ccn.plots import save_figure
from ccn.files import atomic_write, write_json
from ccn.runs import read_results


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
    """Beside each unadjusted interval, the verdict after Holm's adjustment over all the variants
    compared with the one reference (several comparisons, one family)."""
    tested = [name for name, p in paired.items() if p["p"] is not None]
    for name, adjusted in zip(tested, holm_adjust([paired[name]["p"] for name in tested])):
        paired[name]["p_holm"] = adjusted
        paired[name]["verdict_holm"] = _verdict(paired[name]["diff_mean"], adjusted < alpha)


def control_pairs(variants: list[str]) -> dict[str, tuple[str, str]]:
    """The referee's test for each partition with a random control of the same sizes: ccn against
    random, and any X against X-random (balanced against balanced-random, ...)."""
    pairs = {}
    if "ccn" in variants and "random" in variants:
        pairs["ccn_vs_random"] = ("ccn", "random")
    for name in variants:
        if f"{name}-random" in variants:
            pairs[f"{name}_vs_{name}-random"] = (name, f"{name}-random")
    return pairs


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


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
        entry["top1_mean"], entry["top1_std"] = _mean_std(top1)
        entry["top5_mean"], entry["top5_std"] = _mean_std(top5)
        entry["rules"] = {rule: _mean_std([r["rules"][rule]["top1"] for r in results])[0]
                          for rule in results[0]["rules"]}
        for key in ("group_acc", "within_acc", "balanced_top1"):
            if key in results[0]:
                entry[f"{key}_mean"] = _mean_std([r[key] for r in results])[0]
        entry["wall_time_s"] = float(sum(r["wall_time_s"] for r in results))
        variants[name] = entry
    ref = variants[grid.reference]["top1"]
    paired = {name: paired_difference(v["top1"], ref) for name, v in variants.items() if name != grid.reference}
    add_holm_verdicts(paired)
    # the referee's test: do the learned groups matter beyond the head structure?
    paired_extra = {key: paired_difference(variants[a]["top1"], variants[b]["top1"])
                    for key, (a, b) in control_pairs(list(variants)).items()}
    return {"reference": grid.reference, "seeds": grid.seeds, "variants": variants, "paired": paired,
            "controls": paired_extra,
            "groups": group_statistics(grid, out, runs), "facts": _facts(runs)}


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
        if "coarse_ari" in hierarchies[0].how:
            entry["coarse_ari"] = [h.how["coarse_ari"] for h in hierarchies]
            entry["coarse_nmi"] = [h.how["coarse_nmi"] for h in hierarchies]
        pairs = [agreement(a.groups, b.groups, a.num_classes)["ari"] for a, b in itertools.combinations(hierarchies, 2)]
        entry["seed_ari"] = pairs
        entry["seed_ari_mean"] = float(np.mean(pairs)) if pairs else None
        result[name] = entry
    return result


def _facts(runs: dict) -> dict:
    first = next(iter(runs.values()))[0]
    return {"data": first["data"], "model": first["model"], "epochs": first["epochs"],
            "train_images": first["train_images"], "test_images": first["test_images"],
            "eval_set": first.get("eval_set", "test"),
            "num_classes": first["num_classes"], "machine": first["machine"], "device": first["device"],
            "torch": torch.__version__, "date": str(datetime.date.today()),
            "total_wall_time_s": float(sum(r["wall_time_s"] for rs in runs.values() for r in rs))}


# ---------------------------------------------------------------- report.md and figures


def write_report(grid, out: Path, seconds: float) -> dict:
    out = Path(out)
    summary = summarise(grid, out)
    write_json(out / "summary.json", summary)
    figures = write_figures(grid, out, summary)
    report = render_report(grid, summary, figures, out)
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(report))
    return summary


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _sentence(name: str, reference: str, p: dict) -> str:
    if p["ci95"] is None:
        return f"- **{name}** vs {reference}: {100 * p['diff_mean']:+.2f} points with one seed; no interval, no claim."
    low, high = (100 * v for v in p["ci95"])
    words = {"better": "better than", "worse": "worse than",
             "indistinguishable": "indistinguishable at 95 % from"}[p["verdict"]]
    return (f"- **{name}** is {words} **{reference}**: paired difference {100 * p['diff_mean']:+.2f} points, "
            f"95 % interval [{low:+.2f}, {high:+.2f}] over {len(p['diffs'])} seeds.")


_EVAL_SET_WORDS = {"test": "test set", "validation": "validation split of the training images (data.val_fraction)"}


def render_report(grid, summary: dict, figures: dict, out: Path) -> str:
    f, ref = summary["facts"], summary["reference"]
    lines = [
        f"# Experiment `{grid.name}`: {f['data']}, {f['model']}, {f['epochs']} epochs, seeds {summary['seeds']}",
        "",
        f"- Data: {f['data']} ({f['num_classes']} classes, {f['train_images']} training / {f['test_images']} "
        f"{f['eval_set']} images; scored on the {_EVAL_SET_WORDS[f['eval_set']]}). Backbone: {f['model']}. "
        f"Budget: {f['epochs']} epochs per run, probe epochs included.",
        f"- Machine: {f['machine']}, device {f['device']}, torch {f['torch']}, {f['date']}. "
        f"Training time of all runs: {f['total_wall_time_s'] / 60:.1f} min.",
        "- The same seed gives every variant the same initial weights and data order, so differences are paired;"
        " intervals are Student-t over seeds.",
        "",
        "- Verdicts: the unadjusted 95 % interval, and beside it Holm's adjustment over all the variants compared "
        f"with {ref} (family-wise error 5 %).",
        "",
        "| variant | top-1 % (mean +- std) | top-5 % | balanced top-1 % | per seed top-1 % | diff vs " + ref
        + " (points) | 95 % interval | Holm-adjusted p | verdict (Holm) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, v in summary["variants"].items():
        p = summary["paired"].get(name)
        diff = f"{100 * p['diff_mean']:+.2f}" if p else "reference"
        ci = f"[{100 * p['ci95'][0]:+.2f}, {100 * p['ci95'][1]:+.2f}]" if p and p["ci95"] else "-"
        holm = f"{p['p_holm']:.3f} | {p['verdict_holm']}" if p and "p_holm" in p else "- | -"
        balanced = _pct(v["balanced_top1_mean"]) if "balanced_top1_mean" in v else "-"
        lines.append(f"| {name} | {_pct(v['top1_mean'])} +- {_pct(v['top1_std'])} | {_pct(v['top5_mean'])} | "
                     f"{balanced} | {', '.join(_pct(x) for x in v['top1'])} | {diff} | {ci} | {holm} |")
    lines += ["", "## What the controls say", ""]
    lines += [_sentence(name, ref, p) for name, p in summary["paired"].items()]
    for key, (a, b) in control_pairs(list(summary["variants"])).items():
        if key in summary["controls"]:
            lines.append(_sentence(a, b, summary["controls"][key])
                         + " This is the referee's test of whether the groups matter beyond the head structure.")
    lines += ["", "Top-1 % of every inference rule (mean over seeds) for the variants with groups. Group and "
              "within-group accuracy depend on the partition and are not comparable between variants with "
              "different partitions (a one-class group has within-group accuracy 1 by construction); compare "
              "top-1, top-5 and balanced top-1 instead.", "",
              "| variant | " + " | ".join(("soft", "hard", "flat", "blend")) + " | group acc | within acc |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, v in summary["variants"].items():
        if "soft" in v["rules"]:
            lines.append(f"| {name} | " + " | ".join(_pct(v["rules"][r]) for r in ("soft", "hard", "flat", "blend"))
                         + f" | {_pct(v['group_acc_mean'])} | {_pct(v['within_acc_mean'])} |")
    lines += ["", "## Groups", ""]
    for name, g in summary["groups"].items():
        stable = f"{g['seed_ari_mean']:.2f}" if g["seed_ari_mean"] is not None else "-"
        coarse = f", ARI against coarse labels {np.mean(g['coarse_ari']):.2f}" if "coarse_ari" in g else ""
        lines.append(f"- {name}: group sizes (seed {summary['seeds'][0]}) {g['sizes'][0]}, largest / mean size "
                     f"{g['largest_over_mean'][0]:.2f}, smallest / mean {g['smallest_over_mean'][0]:.2f}; mean ARI "
                     f"between the groups of different seeds {stable}{coarse}.")
    h = _hierarchy(out, "ccn", summary["seeds"][0]) if "ccn" in grid.variants else None
    if h is not None:
        lines += ["", f"Learned groups of `ccn`, seed {summary['seeds'][0]}:", ""]
        lines += [f"{k + 1}. {', '.join(names)}" for k, names in enumerate(h.named_groups())]
    lines += ["", "## Figures", ""] + [f"![{title}]({name})" for title, name in figures.items()]
    lines += ["", "Each run's folder (config, metrics, results, weights) is `runs/<variant>-s<seed>/` beside the "
                  "experiment's summary.json.", ""]
    return "\n".join(lines)


def write_figures(grid, out: Path, summary: dict) -> dict:
    from ccn.plots import _pyplot, dendrogram_png, heatmap_png

    plt = _pyplot()
    figures = {}
    names = list(summary["variants"])
    means = [100 * summary["variants"][n]["top1_mean"] for n in names]
    stds = [100 * summary["variants"][n]["top1_std"] for n in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 4))
    ax.bar(names, means, yerr=stds, capsize=4, color="tab:blue")
    for i, n in enumerate(names):
        ax.scatter([i] * len(grid.seeds), [100 * x for x in summary["variants"][n]["top1"]], color="black", s=10)
    low = min(m - s for m, s in zip(means, stds))
    ax.set_ylim(max(0, low - 5), min(100, max(means) + max(stds) + 3))
    ax.set_ylabel("top-1 accuracy % (mean +- std, dots: seeds)")
    fig.tight_layout()
    save_figure(fig, out / "accuracy.png")
    figures["accuracy per variant"] = "accuracy.png"
    h = _hierarchy(out, "ccn", grid.seeds[0]) if "ccn" in grid.variants else None
    if h is not None and h.merges is not None:
        figures["dendrogram of the learned groups"] = dendrogram_png(h, out / "dendrogram.png").name
        run_dir = out / "runs" / f"ccn-s{grid.seeds[0]}"
        figures["class distances"] = heatmap_png(h.with_distances(run_dir), out / "distances.png").name
        figures["accuracy per learned group"] = _per_group_png(grid, out, h, plt).name
    return figures


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
