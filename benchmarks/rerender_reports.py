"""Re-render committed study reports (docs/results/*/) with the current report code, from their
summary.json alone: the run folders are not committed, so the per-seed top-1 values in summary.json
are all the statistics need. Recomputes the paired comparisons (Holm within each family), writes
summary.json, report.md and the forest plot (differences.png), drops the old accuracy bars, and keeps
the dendrogram, distance and per-group figures and the learned-groups list of the old report (they
need the run folders to redraw).

    python benchmarks/rerender_reports.py docs/results/caltech101-confirm docs/results/cifar10-jpeg-full
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

from ccn.files import atomic_write, write_json
from ccn.plots import _pyplot
from ccn.grid_statistics import comparisons
from ccn.report import forest_png, render_report

KEPT_FIGURES = {"dendrogram of the learned groups": "dendrogram.png", "class distances": "distances.png",
                "accuracy per learned group": "per_group.png"}
RERENDERED = ("Re-rendered from summary.json with the report code of issue 19 (Holm verdicts in the sentences, "
              "the referee controls as their own family, the forest plot); the runs themselves are those of the "
              "date above.")


def rerender(folder: Path) -> None:
    old = (folder / "report.md").read_text()
    summary = json.loads((folder / "summary.json").read_text())
    summary.update(comparisons(summary["variants"], summary["reference"], []))
    summary.setdefault("code", [])  # not recorded then
    name = re.match(r"# Experiment `([^`]+)`", old).group(1)
    grid = SimpleNamespace(name=name, variants=summary["variants"], seeds=summary["seeds"],
                           reference=summary["reference"], primary_records=[])
    figures = {f"paired difference from {summary['reference']} with 95 % intervals":
               forest_png(summary, folder, _pyplot()).name}
    figures.update({title: file for title, file in KEPT_FIGURES.items() if (folder / file).exists()})
    report = render_report(grid, summary, figures, folder)
    groups = re.search(r"\nLearned groups of `ccn`.*?(?=\n## Figures)", old, re.S)
    if groups:
        report = report.replace("\n## Figures", groups.group(0) + "\n## Figures", 1)
    report = report.replace("\n## What the comparisons say", f"\n{RERENDERED}\n\n## What the comparisons say", 1)
    write_json(folder / "summary.json", summary)
    atomic_write(folder / "report.md", lambda tmp: tmp.write_text(report))
    (folder / "accuracy.png").unlink(missing_ok=True)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        rerender(Path(arg))
        print(f"re-rendered {arg}")
