"""Peak memory of a whole `ccn train` (disk and stream stores) at two folder sizes (issue 30 item 8).

Generates folders of synthetic JPEGs (S x S pixels, 10 classes, a tenth of them test images) in a
scratch folder, then runs the default `ccn train` on each with `data.store=disk` and `stream`, a short
`train.max_steps`, an empty cache, in a fresh process. The parent samples, every 50 ms, the anonymous
memory (RssAnon) of the training process and of the whole process tree (decoding workers included),
and where this machine has a cgroup v1 memory controller and we are root, runs the child in a cgroup
of its own (no limit) and reads the cgroup's peak (memory.max_usage_in_bytes: anonymous memory and page
cache together, what a memory limit is checked against) and its sampled anonymous memory (total_rss).

    python benchmarks/bench_memory.py                         # 6,000 and 24,000 images at 128 px
    python benchmarks/bench_memory.py --sizes 500 --stores disk --steps 5 --no-record
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_scale import make_folder  # noqa: E402  (the same synthetic JPEG folders)
from results_file import append_section  # noqa: E402

CGROUP = Path("/sys/fs/cgroup/memory")
REPO = Path(__file__).resolve().parents[1]
CHILD = textwrap.dedent("""
    import os, sys
    if sys.argv[1]:
        open(sys.argv[1], "w").write(str(os.getpid()))  # into the cgroup before anything is allocated
    from ccn.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(pid: int) -> list[int]:
    """pid and all its descendants (the decoding workers)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def cgroup_value(group: Path, name: str, key: str = "") -> int:
    try:
        text = (group / name).read_text()
    except OSError:
        return 0
    if not key:
        return int(text.strip())
    for line in text.splitlines():
        if line.startswith(key + " "):
            return int(line.split()[1])
    return 0


def measure(root: Path, store: str, pixels: int, steps: int, scratch: Path) -> dict:
    cache, out = scratch / "cache", scratch / "run"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    group = CGROUP / f"ccn-bench-{os.getpid()}" if (CGROUP / "memory.limit_in_bytes").exists() and os.geteuid() == 0 else None
    if group is not None:
        group.mkdir()
    keys = ["data.name=folder", f"data.root={root}", f"data.image_size={pixels}", f"data.store={store}",
            f"train.max_steps={steps}", "method.name=flat", "train.eval_batch_size=64",
            "train.progress=false"]
    args = ["train", *[a for k in keys for a in ("--set", k)], "--out", str(out)]
    env = {**os.environ, "CCN_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO / "src")}
    peaks = {"main": 0, "tree": 0, "cgroup_anon": 0, "build": 0, "after": 0}
    built = False  # both splits' stores written (their sidecars exist): the training process's peak after that
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(group / "cgroup.procs") if group else "", *args],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(child.stdout), daemon=True)
    reader.start()
    try:
        while child.poll() is None:
            main_kb = status_kb(child.pid, "RssAnon")
            peaks["main"] = max(peaks["main"], main_kb)
            built = built or (store == "disk" and len(list(cache.glob("**/folder-*.json"))) >= 2)
            peaks["after" if built else "build"] = max(peaks["after" if built else "build"], main_kb)
            peaks["tree"] = max(peaks["tree"], sum(status_kb(p, "RssAnon") for p in tree(child.pid)))
            if group is not None:
                peaks["cgroup_anon"] = max(peaks["cgroup_anon"], cgroup_value(group, "memory.stat", "total_rss") // 1024)
            time.sleep(0.05)
        reader.join(timeout=10)
        cgroup_peak = cgroup_value(group, "memory.max_usage_in_bytes") if group is not None else 0
    finally:
        if group is not None:
            for pid in (group / "cgroup.procs").read_text().split():
                os.kill(int(pid), 9)
            time.sleep(0.5)
            group.rmdir()
    if child.returncode != 0:
        raise SystemExit(f"{store} run failed ({child.returncode}): {''.join(output)[-2000:]}")
    shutil.rmtree(cache, ignore_errors=True)
    return {"build_mb": peaks["build"] / 1024, "after_mb": peaks["after"] / 1024 if built else None,
            "main_mb": peaks["main"] / 1024, "tree_mb": peaks["tree"] / 1024,
            "cgroup_anon_mb": peaks["cgroup_anon"] / 1024, "cgroup_peak_mb": cgroup_peak / 2**20,
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[6000, 24000])
    parser.add_argument("--stores", nargs="+", default=["disk", "stream"])
    parser.add_argument("--pixels", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/ccn-bench-memory"))
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    import torch
    lines = [f"## Peak memory of `ccn train`, disk and stream stores, {' and '.join(f'{n:,}' for n in args.sizes)} "
             f"JPEGs at {args.pixels} px ({datetime.date.today()})", "",
             f"{platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}, load {os.getloadavg()[0]:.1f} at "
             f"start. `python benchmarks/bench_memory.py --sizes {' '.join(map(str, args.sizes))} --steps {args.steps}`: "
             "`ccn train` with the defaults (fastnet, batch 32) and method.name=flat, train.eval_batch_size=64 "
             "(the model's own memory small beside the store's), an empty cache. RssAnon: anonymous memory, sampled every "
             "50 ms (training process; process tree with the decoding workers); cgroup peak: "
             "memory.max_usage_in_bytes of a cgroup of its own (anonymous memory and page cache); cgroup anon: its "
             "sampled total_rss.", "",
             "| images | decoded MB | store | peak RssAnon MB, training process: while the store is built / after / "
             "whole run | peak RssAnon MB, tree | cgroup anon MB | cgroup peak MB | s |",
             "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    print("\n".join(lines), flush=True)
    for n in args.sizes:
        root = args.scratch / f"folder-{n}-{args.pixels}"
        if not (root / "train").is_dir():
            make_folder(root, n, args.pixels)
        for store in args.stores:
            r = measure(root, store, args.pixels, args.steps, args.scratch)
            phases = f"{r['build_mb']:.0f} / {r['after_mb']:.0f}" if store == "disk" else "- / -"  # a stream builds nothing
            line = (f"| {n:,} | {n * 3 * args.pixels ** 2 / 1e6:.0f} | {store} | {phases} / "
                    f"{r['main_mb']:.0f} | {r['tree_mb']:.0f} | "
                    f"{r['cgroup_anon_mb']:.0f} | {r['cgroup_peak_mb']:.0f} | {r['seconds']:.0f} |")
            lines.append(line)
            print(line, flush=True)
    lines.append(f"\nload {os.getloadavg()[0]:.1f} at the end.")
    if not args.no_record:
        append_section("\n".join(lines))


if __name__ == "__main__":
    main()
