"""Accuracy against CPU-minutes: train candidate recipes (flat head) and record where each one is.

    python benchmarks/bench_recipe.py --title "CIFAR-10 JPEG, 2 epochs" \\
        --base data.name=folder --base data.root=/tmp/data/cifar10-jpeg --base train.epochs=2 \\
        --candidate "resnet20 lr0.1:model.name=resnet20,train.lr=0.1" \\
        --candidate "fastnet w32 lr0.05:model.name=fastnet,model.width=32,train.lr=0.05"

Every candidate is a `ccn train` run (method flat, seed 0 unless --base says otherwise) through the
library's own pipeline, so its numbers are what the command line would give. For each epoch the
table gives the training seconds so far (the evaluation after every epoch is not counted: it is a
reporting cost) and the top-1 on the test set then; the last column is the run's wall time,
evaluation and data loading included. The runs write no run folder (the tables recorded on
2026-11-25 still included a checkpoint save per epoch in their wall time). Appends a section to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import io
import platform

import torch

from ccn import config as cfgmod
from ccn.pipeline import run_training
from ccn.tracking import RunLog
from results_file import append_section


def parse_candidate(spec: str) -> tuple[str, list[str]]:
    label, sep, overrides = spec.partition(":")
    if not sep:
        raise SystemExit(f"--candidate {spec!r}: write it as LABEL:key=value,key=value")
    return label.strip(), [item.strip() for item in overrides.split(",") if item.strip()]


class CollectingLog(RunLog):
    """Keeps the epoch rows in memory: no run folder, so no checkpoint or weight files are written."""

    def __init__(self):
        super().__init__(None, stream=io.StringIO())  # quiet: the table says it all
        self.rows: list[dict] = []

    def epoch(self, row: dict) -> None:
        self.rows.append(row)


def run_candidate(base: list[str], overrides: list[str]) -> dict:
    config = cfgmod.load(None, ["method.name=flat", "train.progress=false", *base, *overrides])
    log = CollectingLog()
    results = run_training(config, None, log)
    elapsed, curve = 0.0, []
    for row in log.rows:
        elapsed += row["seconds"]
        curve.append((elapsed, row["top1"]))
    return {"config": config, "results": results, "curve": curve,
            "images_per_s": sum(r["images_per_s"] for r in log.rows) / len(log.rows)}


def table(title: str, base: list[str], outcomes: list[tuple[str, dict]]) -> str:
    first = outcomes[0][1]["results"]
    lines = [f"## Recipe search: {title} ({datetime.date.today()})",
             f"Machine: {platform.node()} {platform.machine()}, {torch.get_num_threads()} threads, torch "
             f"{torch.__version__}, CPU. Data: {first['data']}, {first['train_images']} train / "
             f"{first['test_images']} test images, {first['preprocess']['image_size']} px. Flat head, seed "
             f"{first['seed']}. Command: `python benchmarks/bench_recipe.py` with "
             f"{' '.join('--base ' + b for b in base)} and the candidates below.", "",
             "| candidate | parameters | training images/s | top-1 after each epoch (training seconds so far) "
             "| final top-1 | wall s |", "| --- | --- | --- | --- | --- | --- |"]
    for label, outcome in outcomes:
        res = outcome["results"]
        curve = ", ".join(f"{100 * acc:.1f} % ({seconds:.0f})" for seconds, acc in outcome["curve"])
        lines.append(f"| {label} | {res['parameters'] / 1e6:.2f} M | {outcome['images_per_s']:.0f} | {curve} "
                     f"| {100 * res['top1']:.2f} % | {res['wall_time_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--title", required=True)
    parser.add_argument("--base", action="append", default=[], help="override shared by every candidate")
    parser.add_argument("--candidate", action="append", required=True, help="LABEL:key=value,key=value")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    outcomes = []
    for spec in args.candidate:
        label, overrides = parse_candidate(spec)
        outcome = run_candidate(args.base, overrides)
        outcomes.append((label, outcome))
        last = outcome["curve"][-1]
        print(f"{label}: top-1 {100 * outcome['results']['top1']:.2f} % after {last[0]:.0f} s of training, "
              f"{outcome['images_per_s']:.0f} images/s", flush=True)
    text = table(args.title, args.base, outcomes)
    print(text)
    if not args.no_write:
        append_section(text)


if __name__ == "__main__":
    main()
