"""Time to accuracy (issue 20): train a recipe for several seeds and say whether it reaches its target
top-1 within its budget of training seconds, with the time also in a unit that travels between
machines: the seconds of one bare-loop ResNet-20 epoch (50,000 images at batch 128, forward,
cross-entropy, backward, SGD step over pre-normalised tensors in channels_last) measured in the same
run, once before and once after the seeds.

Run it on a QUIET machine (nothing else running; the 2-core VM's speed differs by 2x from day to day
and under load by far more):

    python benchmarks/bench_time_to_accuracy.py --config configs/cifar10_cpu_10min.yaml \\
        --target 0.85 --budget 600 --set data.root=DEST/cifar10-jpeg
    python benchmarks/bench_time_to_accuracy.py --config configs/cifar10_cpu_30min.yaml \\
        --target 0.90 --budget 1800 --set data.root=DEST/cifar10-jpeg

Training seconds are the sum of the epochs' training time (the trainer's own clock: the steps,
augmentation and lookahead; not the per-epoch test scoring, which is a reporting cost, nor loading
the data); the run's whole wall time is reported beside them. Every run is a `ccn train` through
the library's pipeline (no run folder written). Appends a section to benchmarks/RESULTS.md unless
--no-write.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_recipe import CollectingLog  # noqa: E402
from bench_speed import bare_images_per_s, make_model  # noqa: E402

from ccn import config as cfgmod  # noqa: E402
from ccn.pipeline import run_training  # noqa: E402
from ccn.recipes import resolve  # noqa: E402
from results_file import append_section  # noqa: E402

UNIT_IMAGES, UNIT_BATCH = 50_000, 128  # one CIFAR-10 epoch of ResNet-20


def unit_seconds(steps: int) -> float:
    """Seconds of one bare-loop ResNet-20 epoch (50,000 images at batch 128), timed over `steps`
    steps on random 32 px images and scaled to the epoch when `steps` is fewer than its 390."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (UNIT_BATCH * steps, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (UNIT_BATCH * steps,), generator=g)
    per_s = bare_images_per_s(make_model("resnet20", 10), images, labels, UNIT_BATCH, steps, channels_last=True)
    return UNIT_IMAGES / per_s


def run_seed(config_path: str, overrides: list[str], seed: int) -> dict:
    config = cfgmod.load(resolve(config_path, "config"), ["train.progress=false", *overrides, f"seed={seed}"])
    log = CollectingLog()
    start = time.perf_counter()
    results = run_training(config, None, log)
    return {"seed": seed, "top1": results["top1"], "train_s": sum(r["seconds"] for r in log.rows),
            "wall_s": time.perf_counter() - start, "results": results, "config": config}


def section(args, runs: list[dict], units: list[float]) -> str:
    unit = statistics.mean(units)
    top1 = [r["top1"] for r in runs]
    train = [r["train_s"] for r in runs]
    first = runs[0]["results"]
    reached = all(t >= args.target for t in top1) and all(s <= args.budget for s in train)
    seeds = f"{len(runs)} seed{'s' if len(runs) != 1 else ''}"
    lines = [f"## Time to accuracy: {Path(args.config).name}, {seeds} ({datetime.date.today()})",
             f"Machine: {platform.node()} {platform.machine()}, {torch.get_num_threads()} threads, torch "
             f"{torch.__version__}, CPU; load average {args.load_before} before, {load()} after. "
             f"Data: {first['data']}, "
             f"{first['train_images']} train / {first['test_images']} {first['eval_set']} images, "
             f"{first['preprocess']['image_size']} px; model {first['model']}, method {first['method']}, "
             f"{first['epochs']} epochs. Command: `python benchmarks/bench_time_to_accuracy.py "
             f"{' '.join(sys.argv[1:])}`.",
             f"Unit: one bare-loop ResNet-20 epoch = {unit:.1f} s (before {units[0]:.1f} s, after {units[1]:.1f} s"
             f"{'' if args.unit_steps >= 390 else f'; timed over {args.unit_steps} steps and scaled to 390'}).", "",
             "| seed | top-1 | training s | training / unit | wall s |", "| --- | --- | --- | --- | --- |"]
    for r in runs:
        lines.append(f"| {r['seed']} | {100 * r['top1']:.2f} % | {r['train_s']:.0f} | {r['train_s'] / unit:.2f} "
                     f"| {r['wall_s']:.0f} |")
    lines += [f"| mean [range] | {100 * statistics.mean(top1):.2f} % [{100 * min(top1):.2f}, {100 * max(top1):.2f}] "
              f"| {statistics.mean(train):.0f} [{min(train):.0f}, {max(train):.0f}] "
              f"| {statistics.mean(train) / unit:.2f} | |", "",
              f"Target {100 * args.target:.0f} % within {args.budget:.0f} training seconds on every seed: "
              f"{'reached' if reached else 'NOT reached'}."]
    return "\n".join(lines) + "\n"


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/cifar10_cpu_10min.yaml")
    parser.add_argument("--target", type=float, default=0.85, help="top-1 to reach, 0-1")
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds allowed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], help="config override, KEY=VALUE")
    parser.add_argument("--unit-steps", type=int, default=390, help="steps timed for the unit (390: a whole epoch)")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    args = parser.parse_args()
    args.load_before = load()
    units = [unit_seconds(args.unit_steps)]
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(args.config, args.set, seed))
        print(f"seed {seed}: top-1 {100 * runs[-1]['top1']:.2f} % in {runs[-1]['train_s']:.0f} training s", flush=True)
    units.append(unit_seconds(args.unit_steps))
    text = section(args, runs, units)
    print(text)
    if not args.no_write:
        append_section(text)


if __name__ == "__main__":
    main()
