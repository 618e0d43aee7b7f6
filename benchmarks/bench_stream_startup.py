"""A streamed data set's first start with data.skip_bad_images: the unreadable-file scan decodes every
image once and keeps its pixel sums, so the channel statistics are added up from them; before, they
took a second decoding pass. Times both ways on the same files in one run, and checks they agree.

    python benchmarks/bench_stream_startup.py --root ../shared/data/caltech101 --size 32 --rounds 3
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from results_file import RESULTS, append_section  # noqa: E402

from ccn.config import DataConfig  # noqa: E402
from ccn.data import load_dataset  # noqa: E402
from ccn.data.base import channel_stats  # noqa: E402


def one_round(root: Path, size: int, workers: int) -> tuple[float, float, float, bool]:
    """(seconds of the load with its scan, statistics from the scan's sums, statistics by a second pass,
    whether both statistics are identical). No cache: every round decodes the files again."""
    config = DataConfig(name="caltech101", root=str(root), image_size=size, skip_bad_images=True, store="stream",
                        workers=workers, cache=False)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a skipped file is named in a warning; not what is timed here
        ds = load_dataset(config)
    loaded = time.perf_counter()
    from_sums = channel_stats(ds.train_images)
    added = time.perf_counter()
    ds.train_images.pixel_sums = None  # as before the change: a decoding pass of its own
    second_pass = channel_stats(ds.train_images)
    done = time.perf_counter()
    return loaded - started, added - loaded, done - added, from_sums == second_pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="a Caltech-101 folder (101_ObjectCategories inside)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = [one_round(args.root, args.size, args.workers) for _ in range(args.rounds)]
    load_after = os.getloadavg()
    scan = statistics.median(r[0] for r in rows)
    second = statistics.median(r[2] for r in rows)
    text = (f"\n## Stream start-up with skip_bad_images: statistics from the scan against a second pass "
            f"({datetime.date.today().isoformat()})\n"
            f"Machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load average {load_before[0]:.1f} before / {load_after[0]:.1f} after. "
            f"Data: Caltech-101 at {args.size} px, data.store=stream, data.workers={args.workers}, no cache. Command: "
            f"`python benchmarks/bench_stream_startup.py --root {args.root} --size {args.size} --workers {args.workers} "
            f"--rounds {args.rounds}`\n\n"
            "| round | load with the scan (s) | statistics from its sums (s) | statistics by a second pass (s) | "
            "identical |\n| --- | --- | --- | --- | --- |\n"
            + "".join(f"| {i + 1} | {a:.2f} | {b:.4f} | {c:.2f} | {'yes' if same else 'NO'} |\n"
                      for i, (a, b, c, same) in enumerate(rows))
            + f"\nA first start decodes the files once instead of twice: the second pass ({second:.2f} s, median) "
              f"is {second / scan:.2f}x the scan itself ({scan:.2f} s), and the statistics are the same numbers.\n")
    append_section(text, args.results)
    print(text)


if __name__ == "__main__":
    main()
