"""What the store checksum costs (issue 30): ccn.data.store.StoreDigest over a store file the size of
Tiny ImageNet's at 64 px (110,000 images x 3 x 64 x 64 = 1.35 GB decoded), as every run that reuses a
store checks it before use. The file is written with random bytes (hashing speed does not depend on
them), read once to warm the page cache, then hashed warm; each figure the best of --rounds.

    python benchmarks/bench_store_checksum.py               # 1.35 GB in /tmp
    python benchmarks/bench_store_checksum.py --images 1000 --no-record
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results_file import append_section  # noqa: E402


def best_of(rounds: int, call) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=110_000)
    parser.add_argument("--pixels", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--file", type=Path, default=Path("/tmp/ccn-bench-checksum.u8"))
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    import torch
    from ccn.data import store
    size = args.images * 3 * args.pixels ** 2
    block = np.random.default_rng(0).integers(0, 256, 2**24, dtype=np.uint8).tobytes()
    with open(args.file, "wb") as handle:
        for start in range(0, size, len(block)):
            handle.write(block[:min(len(block), size - start)])
    data = np.memmap(args.file, dtype=np.uint8, mode="c")
    meta = {"labels": list(range(200)) * (args.images // 200)}
    threads = min(8, os.cpu_count() or 1)
    store.StoreDigest.of(data, meta)  # warms the page cache
    ours = best_of(args.rounds, lambda: store.StoreDigest.of(data, meta))
    view = memoryview(data)
    one = {name: best_of(args.rounds, lambda: [hashlib.new(name, view[s:s + 2**24]) for s in range(0, size, 2**24)])
           for name in ("sha256", "blake2b")}
    args.file.unlink()
    lines = [f"## Store checksum on a Tiny-ImageNet-sized store, {size / 1e9:.2f} GB ({datetime.date.today()})", "",
             f"{platform.node()}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), torch "
             f"{torch.__version__}, load {os.getloadavg()[0]:.1f}. `python benchmarks/bench_store_checksum.py`: "
             f"{args.images:,} images x 3 x {args.pixels} x {args.pixels} bytes in a file, warm in the page cache, "
             f"best of {args.rounds}. Every run that reuses a store checks its checksum before use (a store it has "
             "just built is not hashed again: the rows are hashed as they are written).", "",
             "| what | seconds | GB/s |", "| --- | ---: | ---: |",
             f"| StoreDigest.of (SHA-256 of 16 MiB pieces in {threads} threads, then of their digests and the "
             f"labels) | {ours:.2f} | {size / ours / 1e9:.2f} |",
             f"| one thread, SHA-256 | {one['sha256']:.2f} | {size / one['sha256'] / 1e9:.2f} |",
             f"| one thread, BLAKE2b | {one['blake2b']:.2f} | {size / one['blake2b'] / 1e9:.2f} |"]
    print("\n".join(lines))
    if not args.no_record:
        append_section("\n".join(lines))


if __name__ == "__main__":
    main()
