"""Peak memory outside the page cache vs data set size, for data.store=memory and disk (issue 17).

Generates synthetic image folders (JPEGs, S x S pixels, 10 classes) of two sizes in a scratch folder,
then, for each size and store, runs the data path of a training run in a fresh process with an
empty cache: decode the folder into the store, channel statistics, a validation split, one epoch of
augmented training batches and one pass over the test batches, both in batches of 128 (no model: the model's memory does
not depend on the data set size). The parent samples the child's RssAnon (/proc/PID/status: the
anonymous memory the process owns, not the page cache the disk store is read through) every 20 ms.

    python benchmarks/bench_scale.py                      # 2,000 and 8,000 images at 128 px
    python benchmarks/bench_scale.py --sizes 500 1000 --pixels 64 --scratch /tmp/bench-scale
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time, torch
from ccn import config as cfgmod
from ccn.data import load_dataset
from ccn.data.prepare import prepare_data
from ccn.plan import DataFacts, resolve
root, store, pixels = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = cfgmod.load(None, ["data.name=folder", f"data.root={root}", f"data.image_size={pixels}",
                            f"data.store={store}", "data.val_fraction=0.1", "train.batch_size=128",
                            "train.eval_batch_size=128"])
start = time.perf_counter()
ds = load_dataset(config.data)
data = prepare_data(resolve(config, DataFacts.of(ds)), torch.device("cpu"), ds=ds)
loaded = time.perf_counter() - start
checksum = 0
for x, y in data.train.epoch(1):
    checksum += int(y.sum())
for x, y in data.test.epoch(0):
    checksum += int(y.sum())
print(json.dumps({"store": ds.notes["store"], "load_s": loaded, "total_s": time.perf_counter() - start,
                  "train_images": len(data.train.labels), "checksum": checksum}))
"""


def make_folder(root: Path, images: int, pixels: int, classes: int = 10) -> None:
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(images):
        split = "test" if (i // classes) % 10 == 0 else "train"
        folder = root / split / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((pixels, pixels), Image.BILINEAR)
        image.save(folder / f"{i}.jpg", quality=90)


def rss_anon_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(root: Path, store: str, pixels: int, cache: Path) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "CCN_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(root), store, str(pixels)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while child.poll() is None:
        peak = max(peak, rss_anon_kb(child.pid))
        time.sleep(0.02)
    out, err = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"{store} run failed: {err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    shutil.rmtree(cache, ignore_errors=True)
    return {**result, "peak_rss_anon_mb": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--pixels", type=int, default=128)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/ccn-bench-scale"))
    args = parser.parse_args()
    import torch
    print(f"# {datetime.date.today()}, {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"load {os.getloadavg()[0]:.1f} at start")
    print("| images | decoded MB | store | peak RssAnon MB | load + stats s | total s |")
    print("| ---: | ---: | --- | ---: | ---: | ---: |")
    for n in args.sizes:
        root = args.scratch / f"folder-{n}-{args.pixels}"
        if not (root / "train").is_dir():
            make_folder(root, n, args.pixels)
        decoded = n * 3 * args.pixels ** 2 / 1e6
        for store in ("memory", "disk"):
            r = measure(root, store, args.pixels, args.scratch / "cache")
            print(f"| {n} | {decoded:.0f} | {store} | {r['peak_rss_anon_mb']:.0f} | {r['load_s']:.1f} | "
                  f"{r['total_s']:.1f} |", flush=True)
    print(f"load {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
