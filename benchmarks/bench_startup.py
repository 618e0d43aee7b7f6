"""Start-up time of the command line: `ccn --help` against `python -c "import torch"`, measured in
one run (these machines are noisy), alternating the two in rotating order.

    python benchmarks/bench_startup.py [--rounds 7] [--no-append]

The goal (issue 21): `ccn --help` takes at most half the time of importing torch, because the
package facade is lazy and the command line imports torch only inside the commands that need it.
Reports medians and the median of per-round ratios; appends a section to benchmarks/RESULTS.md.
Does not import torch itself (its version is read from the package metadata).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import time

from results_file import append_section

COMMANDS = {
    "ccn --help": [sys.executable, "-m", "ccn", "--help"],
    "import torch": [sys.executable, "-c", "import torch"],
}


def wall_seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(rounds: int) -> tuple[dict[str, list[float]], list[float]]:
    for argv in COMMANDS.values():  # warm the file cache once, uncounted
        wall_seconds(argv)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    ratios = []
    names = list(COMMANDS)
    for r in range(rounds):
        for name in names[r % 2:] + names[:r % 2]:  # rotate which goes first
            times[name].append(wall_seconds(COMMANDS[name]))
        ratios.append(times["ccn --help"][-1] / times["import torch"][-1])
    return times, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-append", action="store_true", help="print only; do not write RESULTS.md")
    args = parser.parse_args()
    load_before = os.getloadavg()
    times, ratios = measure(args.rounds)
    load_after = os.getloadavg()
    today = datetime.datetime.now(datetime.timezone.utc)
    ratio = statistics.median(ratios)
    lines = [
        f"## Start-up: `ccn --help` against `import torch`, {args.rounds} rounds ({today:%Y-%m-%d})",
        f"Machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {importlib.metadata.version('torch')}. Load average (1/5/15 min) before "
        f"{'/'.join(f'{x:.1f}' for x in load_before)}, after {'/'.join(f'{x:.1f}' for x in load_after)}; "
        f"{today:%H:%M} UTC. Command: `python benchmarks/bench_startup.py --rounds {args.rounds}`.",
        "",
        "| command | median s | min s | max s |",
        "| --- | --- | --- | --- |",
        *(f"| `{name}` | {statistics.median(t):.3f} | {min(t):.3f} | {max(t):.3f} |" for name, t in times.items()),
        "",
        f"`ccn --help` / `import torch`, median of per-round ratios: {ratio:.2f} "
        f"(per round {min(ratios):.2f}-{max(ratios):.2f}); goal at most 0.50: {'met' if ratio <= 0.5 else 'NOT met'}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        append_section(text)


if __name__ == "__main__":
    main()
