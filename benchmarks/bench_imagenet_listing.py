"""What listing ImageNet and keying its cache cost, at a fraction of its 1.28 M files.

    python benchmarks/bench_imagenet_listing.py [--classes 1000] [--per-class 128] [--dir /tmp/x] [--no-write]

Builds a Kaggle-layout tree of empty `.JPEG` files (classes x per-class training files, 50 per
class in a flat val/ with LOC_val_solution.csv), then times, with a warm page cache:
- ccn.data.imagenet.list_imagenet (one os.scandir per folder, no stat per file);
- the cache key as ImageNet computes it (names, labels and the folders' modification times);
- the cache key with one stat per file (what the folder reader does), for comparison.
Extrapolates linearly to 1,281,167 + 50,000 files. A cold cache or a network disk makes the stat
per file far slower than this (one round trip each); the folder reads grow with the file count too.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from ccn.data.store import cache_key
from ccn.data.imagenet import list_imagenet
from results_file import append_section

IMAGENET_FILES = 1_281_167 + 50_000


def build(root: Path, classes: int, per_class: int, val_per_class: int = 50) -> int:
    base = root / "ILSVRC" / "Data" / "CLS-LOC"
    rows = ["ImageId,PredictionString"]
    count = 0
    (base / "val").mkdir(parents=True)
    for c in range(classes):
        wnid = f"n{c:08d}"
        folder = base / "train" / wnid
        folder.mkdir(parents=True)
        for i in range(per_class):
            (folder / f"{wnid}_{i}.JPEG").touch()
        for i in range(val_per_class):
            image_id = f"ILSVRC2012_val_{c * val_per_class + i:08d}"
            (base / "val" / f"{image_id}.JPEG").touch()
            rows.append(f"{image_id},{wnid} 0 0 1 1")
        count += per_class + val_per_class
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return count


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=128)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="imagenet-listing-", dir=args.dir))
    try:
        files, build_s = timed(lambda: build(root, args.classes, args.per_class))
        list_imagenet(root)  # warm the page cache, as a second run would find it
        listing, list_s = timed(lambda: list_imagenet(root))
        items = listing.train + listing.val
        _, stamp_s = timed(lambda: cache_key("imagenet", items, 256, "x", listing.stamp))
        _, stat_s = timed(lambda: cache_key("imagenet", items, 256, "x"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    scale = IMAGENET_FILES / files
    load = os.getloadavg()[0]
    text = "\n".join([
        f"\n### ImageNet listing, {datetime.date.today()}",
        "",
        f"`python benchmarks/bench_imagenet_listing.py --classes {args.classes} --per-class {args.per_class}`: "
        f"{files:,} empty files in Kaggle's layout (built in {build_s:.0f} s), warm page cache, local disk; "
        f"{platform.machine()}, load average {load:.1f}. Extrapolated linearly to ImageNet's {IMAGENET_FILES:,} files:",
        "",
        "| step | here | at ImageNet scale |",
        "| --- | --- | --- |",
        f"| list_imagenet (scandir per folder, csv) | {list_s:.2f} s | {list_s * scale:.0f} s |",
        f"| cache key from names + folder mtimes (ImageNet) | {stamp_s:.2f} s | {stamp_s * scale:.0f} s |",
        f"| cache key with a stat per file (folder reader) | {stat_s:.2f} s | {stat_s * scale:.0f} s |",
    ])
    print(text)
    if not args.no_write:
        append_section(text)


if __name__ == "__main__":
    main()
