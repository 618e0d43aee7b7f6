"""Step 2 at many classes: time and peak memory of build_hierarchy on planted profiles (issue 18).

    PYTHONPATH=src python benchmarks/bench_classes.py [--sizes 1000 2000 4000 10000] [--device cpu|cuda]

Each size runs in a fresh subprocess, so its peak resident memory (VmHWM) is its own. The profiles
are planted: C classes dealt at random into K = round(sqrt(C)) groups; a row gets uniform noise
(0.02 x U(0, 1) per class) plus 0.5 + U(0, 1) on every class of its own group, then is normalised
(about half of a row's mass lies outside its group, as after one epoch). Reported per size: wall
and CPU seconds of build_hierarchy (the method's defaults: L1, average linkage, K groups), the
peak RSS of the process (profiles included: C x C float64, 800 MB at 10,000 classes) and the
RSS before the call, the ARI between found and planted groups, how the distances were computed,
and the sizes of hierarchy.json and distances.npy. The goal (issue 18): 10,000 classes in <= 60 s
and <= 4 GB on 2 cores, planted groups recovered, hierarchy.json <= 10 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def planted_profiles(num_classes: int, groups: int, seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, np.ndarray]:
    """(C, C) float64 profiles with planted groups (see the module docstring), and each class's group."""
    rng = np.random.default_rng(seed)
    group_of = rng.permutation(num_classes) % groups
    S = torch.from_numpy(rng.random((num_classes, num_classes), dtype=np.float32)).mul_(0.02)
    for k in range(groups):
        members = torch.from_numpy(np.flatnonzero(group_of == k))
        block = torch.from_numpy(rng.random((len(members), len(members)), dtype=np.float32)).add_(0.5)
        S[members[:, None], members[None, :]] += block
    S = S.double()
    S /= S.sum(1, keepdim=True)
    return S.to(device), group_of


def vm_hwm_mb() -> float:
    """Peak resident memory of this process (Linux VmHWM; ru_maxrss elsewhere)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vm_rss_mb() -> float:
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_size(num_classes: int, device: str) -> dict:
    """Measure build_hierarchy at one class count in this process."""
    from ccn.hierarchy import agreement, build_hierarchy, default_group_count
    from ccn.hierarchy.tree import save_distances

    K = default_group_count(num_classes)
    S, planted = planted_profiles(num_classes, K, device=device)
    names = [f"class{c:05d}" for c in range(num_classes)]
    rss_before = vm_rss_mb()
    cpu0, tick = time.process_time(), time.perf_counter()
    h = build_hierarchy(S, names)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - tick, time.process_time() - cpu0
    found = agreement(h.groups, planted.tolist(), num_classes)
    with tempfile.TemporaryDirectory() as tmp:
        h.save(Path(tmp) / "hierarchy.json")
        save_distances(Path(tmp) / "distances.npy", h.distances)
        sizes = {name: (Path(tmp) / name).stat().st_size / 1e6 for name in ("hierarchy.json", "distances.npy")}
    return {"classes": num_classes, "groups": K, "device": device, "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu_seconds, 2), "peak_rss_mb": round(vm_hwm_mb()), "rss_before_mb": round(rss_before),
            "ari": round(found["ari"], 4), "distances": h.how.get("distances"), "top_k": h.how.get("top_k"),
            "dropped_mass": h.how.get("dropped_mass"), "hierarchy_json_mb": round(sizes["hierarchy.json"], 2),
            "distances_npy_mb": round(sizes["distances.npy"], 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 10000])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2: the project's CPU machine)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process: one size
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one_size(args.one, args.device)))
        return 0
    print(f"# {platform.node()} ({os.cpu_count()} cores, {args.threads} threads), torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load: {os.getloadavg()}")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    for size in args.sizes:
        done = subprocess.run([sys.executable, __file__, "--one", str(size), "--device", args.device,
                               "--threads", str(args.threads)], capture_output=True, text=True, env=env)
        print(done.stdout.strip() or done.stderr.strip()[-2000:], flush=True)
    print(f"# load after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
