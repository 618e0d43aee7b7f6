"""The flat baseline's validation curves at several budgets, from an experiment folder whose variants
differ only in train.epochs (configs/experiments/caltech101_budget.yaml):

    python benchmarks/budget_curves.py EXPERIMENT_FOLDER OUT_FOLDER [TITLE]

writes OUT_FOLDER/curves.png (top-1 per epoch, one line per budget) and OUT_FOLDER/curves.md (the
final top-1 of each budget and its per-epoch values), read from each run's metrics.jsonl."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read_curves(folder: Path) -> dict[str, list[float]]:
    curves = {}
    for metrics in sorted(folder.glob("runs/*/metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if rows and rows[-1]["epoch"] == rows[-1]["epochs"]:  # finished runs only
            curves[metrics.parent.name] = [100 * row["top1"] for row in rows]
    return dict(sorted(curves.items(), key=lambda item: len(item[1])))


DEFAULT_TITLE = "flat baseline, one seed, cosine schedule over each budget"


def main(folder: Path, out: Path, title: str = DEFAULT_TITLE) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = read_curves(folder)
    out.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(10, 4.5))
    colours = plt.get_cmap("tab20").colors  # distinct colours for up to 20 runs
    for k, (name, values) in enumerate(curves.items()):
        axes.plot(range(1, len(values) + 1), values, color=colours[k % len(colours)],
                  label=f"{name}: {values[-1]:.1f} %")
    axes.set(xlabel="epoch", ylabel="validation top-1 (%)", ylim=(0, 100), title=title)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", title="run: last epoch")
    figure.tight_layout()
    figure.savefig(out / "curves.png", dpi=120)
    lines = ["| run | epochs | final validation top-1 | per epoch |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {len(v)} | {v[-1]:.2f} % | {' '.join(f'{x:.1f}' for x in v)} |" for name, v in curves.items()]
    (out / "curves.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])
