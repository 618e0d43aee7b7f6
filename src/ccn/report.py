"""Summaries of an experiment grid: statistics (summary.json), a report (report.md) and figures."""

from __future__ import annotations

import datetime
import itertools
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from scipy import stats

from ccn.hierarchy import Hierarchy, agreement
from ccn.runs import read_results


def paired_difference(values: list[float], reference: list[float]) -> dict:
    """Mean of the per-seed differences with a 95 % t interval over seeds (None when one seed)."""
    diffs = np.asarray(values) - np.asarray(reference)
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return {"diffs": diffs.tolist(), "diff_mean": mean, "ci95": None, "verdict": "one seed: no interval"}
    half = float(stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs)))
    low, high = mean - half, mean + half
    verdict = "better" if low > 0 else "worse" if high < 0 else "indistinguishable"
    return {"diffs": diffs.tolist(), "diff_mean": mean, "ci95": [low, high], "verdict": verdict}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(grid, out: Path) -> dict:
    """summary.json's content, from the results of every run of the grid."""
    variants, runs = {}, {}
    for name in grid.variants:
        results = [read_results(out / "runs" / f"{name}-s{seed}") for seed in grid.seeds]
        runs[name] = results
        top1 = [r["top1"] for r in results]
        top5 = [r["top5"] for r in results]
        entry = {"top1": top1, "top5": top5}
        entry["top1_mean"], entry["top1_std"] = _mean_std(top1)
        entry["top5_mean"], entry["top5_std"] = _mean_std(top5)
        entry["rules"] = {rule: _mean_std([r["rules"][rule]["top1"] for r in results])[0]
                          for rule in results[0]["rules"]}
        for key in ("group_acc", "within_acc"):
            if key in results[0]:
                entry[f"{key}_mean"] = _mean_std([r[key] for r in results])[0]
        entry["wall_time_s"] = float(sum(r["wall_time_s"] for r in results))
        variants[name] = entry
    ref = variants[grid.reference]["top1"]
    paired = {name: paired_difference(v["top1"], ref) for name, v in variants.items() if name != grid.reference}
    if "ccn" in variants and "random" in variants:  # the referee's test: do the learned groups matter?
        paired_extra = {"ccn_vs_random": paired_difference(variants["ccn"]["top1"], variants["random"]["top1"])}
    else:
        paired_extra = {}
    return {"reference": grid.reference, "seeds": grid.seeds, "variants": variants, "paired": paired,
            "controls": paired_extra,
            "groups": group_statistics(grid, out, runs), "facts": _facts(runs)}


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
            "num_classes": first["num_classes"], "machine": first["machine"], "device": first["device"],
            "torch": torch.__version__, "date": str(datetime.date.today()),
            "total_wall_time_s": float(sum(r["wall_time_s"] for rs in runs.values() for r in rs))}


# ---------------------------------------------------------------- report.md and figures


def write_report(grid, out: Path, seconds: float) -> dict:
    out = Path(out)
    summary = summarise(grid, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    figures = write_figures(grid, out, summary)
    (out / "report.md").write_text(render_report(grid, summary, figures, out))
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


def render_report(grid, summary: dict, figures: dict, out: Path) -> str:
    f, ref = summary["facts"], summary["reference"]
    lines = [
        f"# Experiment `{grid.name}`: {f['data']}, {f['model']}, {f['epochs']} epochs, seeds {summary['seeds']}",
        "",
        f"- Data: {f['data']} ({f['num_classes']} classes, {f['train_images']} training / {f['test_images']} test "
        f"images). Backbone: {f['model']}. Budget: {f['epochs']} epochs per run, probe epochs included.",
        f"- Machine: {f['machine']}, device {f['device']}, torch {f['torch']}, {f['date']}. "
        f"Training time of all runs: {f['total_wall_time_s'] / 60:.1f} min.",
        "- The same seed gives every variant the same initial weights and data order, so differences are paired;"
        " intervals are Student-t over seeds.",
        "",
        "| variant | top-1 % (mean +- std) | top-5 % | per seed top-1 % | diff vs " + ref + " (points) | 95 % interval |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, v in summary["variants"].items():
        p = summary["paired"].get(name)
        diff = f"{100 * p['diff_mean']:+.2f}" if p else "reference"
        ci = f"[{100 * p['ci95'][0]:+.2f}, {100 * p['ci95'][1]:+.2f}]" if p and p["ci95"] else "-"
        lines.append(f"| {name} | {_pct(v['top1_mean'])} +- {_pct(v['top1_std'])} | {_pct(v['top5_mean'])} | "
                     f"{', '.join(_pct(x) for x in v['top1'])} | {diff} | {ci} |")
    lines += ["", "## What the controls say", ""]
    lines += [_sentence(name, ref, p) for name, p in summary["paired"].items()]
    if "ccn_vs_random" in summary["controls"]:
        lines.append(_sentence("ccn", "random", summary["controls"]["ccn_vs_random"])
                     + " This is the referee's test of whether the learned groups matter beyond the head structure.")
    lines += ["", "Top-1 % of every inference rule (mean over seeds) for the variants with groups:", "",
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
        lines.append(f"- {name}: group sizes (seed {summary['seeds'][0]}) {g['sizes'][0]}; mean ARI between the "
                     f"groups of different seeds {stable}{coarse}.")
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
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)
    figures["accuracy per variant"] = "accuracy.png"
    h = _hierarchy(out, "ccn", grid.seeds[0]) if "ccn" in grid.variants else None
    if h is not None and h.merges is not None:
        figures["dendrogram of the learned groups"] = dendrogram_png(h, out / "dendrogram.png").name
        figures["class distances"] = heatmap_png(h, out / "distances.png").name
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
    fig.savefig(out / "per_group.png", dpi=110)
    plt.close(fig)
    return out / "per_group.png"
