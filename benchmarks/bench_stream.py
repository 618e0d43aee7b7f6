"""Throughput of data.store=stream against a plain DataLoader + PIL peer, and what Pillow's draft mode buys.

    python benchmarks/bench_stream.py --root ../shared/data/caltech101/101_ObjectCategories \
        [--images 1024] [--size 64] [--batch 64] [--workers 2] [--rounds 3]

1. ours: TensorBatches over a StreamSource (ccn.data.stream): `--workers` processes decode each
   batch's JPEGs (Pillow, draft mode, bilinear resize to --size), a few batches ahead; the main
   process pads, crops and flips the whole batch with the seeded batched augmentation and normalises.
2. the peer: torch.utils.data.DataLoader with the same `--workers`, shuffle, batch size, a Dataset
   whose __getitem__ does the same decode (Pillow, draft, the same resize) and a pad + random crop
   + flip per image in numpy; the main process normalises the collated batch.
Both read the same files (warmed into the page cache by an untimed pass) and produce normalised
float batches of the same shape. Rounds alternate ours / peer; the ratio is the median of per-round
ratios, measured in one run. Then, in one process: decoding the same files with and without
Pillow's draft mode (JPEG DCT scaling). Appends a section to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ccn.data.augment import Augment, Normalize
from ccn.data.images import decode_image, open_image, to_rgb
from ccn.data.loader import TensorBatches
from ccn.data.stream import StreamSource, close_pool
from results_file import append_section

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def pick_files(root: Path, count: int) -> list[Path]:
    files = sorted(p for p in root.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg"))
    step = max(1, len(files) // count)
    return files[::step][:count]


def decode_without_draft(path: Path, size: int) -> np.ndarray:
    with open_image(path) as image:
        return np.asarray(to_rgb(image).resize((size, size), Image.BILINEAR), dtype=np.uint8)


class PeerDataset(torch.utils.data.Dataset):
    """What a plain PyTorch pipeline does: decode, resize, pad + random crop + flip, one image at a time."""

    def __init__(self, paths: list[Path], size: int, padding: int):
        self.paths, self.size, self.padding = paths, size, padding

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as image:
            image.draft("RGB", (self.size * 2, self.size * 2))
            pixels = np.asarray(image.convert("RGB").resize((self.size, self.size), Image.BILINEAR))
        p = self.padding
        padded = np.pad(pixels, ((p, p), (p, p), (0, 0)))
        dy, dx = np.random.randint(0, 2 * p + 1, size=2)
        crop = padded[dy:dy + self.size, dx:dx + self.size]
        if np.random.rand() < 0.5:
            crop = crop[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))), 0


def run_ours(batches: TensorBatches, epoch: int) -> float:
    start, seen = time.perf_counter(), 0
    for x, _ in batches.epoch(epoch):
        seen += len(x)
    return seen / (time.perf_counter() - start)


def run_peer(loader, normalize: Normalize) -> float:
    start, seen = time.perf_counter(), 0
    for images, _ in loader:
        x = normalize(images)
        seen += len(x)
    return seen / (time.perf_counter() - start)


def draft_speedup(paths: list[Path], size: int) -> tuple[float, float]:
    """(images/s with draft, images/s without), one process, alternating halves of the files."""
    timings = {"draft": 0.0, "plain": 0.0}
    for name, decode in (("plain", decode_without_draft), ("draft", decode_image), ("plain", decode_without_draft),
                         ("draft", decode_image)):
        start = time.perf_counter()
        for path in paths:
            decode(path, size)
        timings[name] += time.perf_counter() - start
    return 2 * len(paths) / timings["draft"], 2 * len(paths) / timings["plain"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # the decoding processes get the cores; the augmentation is cheap at these sizes
    load_before = os.getloadavg()
    paths = pick_files(args.root, args.images)
    padding = max(1, args.size // 8)
    normalize = Normalize(MEAN, STD)
    labels = torch.zeros(len(paths), dtype=torch.long)
    ours = TensorBatches(StreamSource(paths, args.size, args.workers, skip_bad=False), labels, args.batch,
                         normalize, Augment(crop_padding=padding, flip=True))
    peer = torch.utils.data.DataLoader(PeerDataset(paths, args.size, padding), batch_size=args.batch, shuffle=True,
                                       drop_last=True, num_workers=args.workers, persistent_workers=args.workers > 0)
    run_ours(ours, 0), run_peer(peer, normalize)  # untimed: files into the page cache, workers started
    rows = []
    for r in range(args.rounds):
        a, b = run_ours(ours, r + 1), run_peer(peer, normalize)
        rows.append((a, b, a / b))
        print(f"round {r + 1}: ours {a:.0f} img/s, peer {b:.0f} img/s, ratio {a / b:.3f}", flush=True)
    close_pool(args.workers)
    with_draft, without = draft_speedup(paths[: min(len(paths), 256)], args.size)
    print(f"decode at {args.size}px in one process: draft {with_draft:.0f} img/s, without {without:.0f} img/s")
    load_after = os.getloadavg()
    ratio = statistics.median(r for _, _, r in rows)
    when = datetime.date.today().isoformat()
    text = (f"\n## Stream store vs DataLoader + PIL peer, {args.images} JPEGs at {args.size} px, {args.workers} workers "
            f"({when})\n"
            f"Machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs), torch {torch.__version__}, "
            f"load average {load_before[0]:.1f} before / {load_after[0]:.1f} after (the machine is shared). "
            f"Files: every {max(1, len(sorted(args.root.glob('*/*'))) // args.images)}-th JPEG under {args.root.name}. "
            f"Batch {args.batch}, pad {padding} + crop + flip, normalised. Command: "
            f"`python benchmarks/bench_stream.py --root {args.root} --images {args.images} --size {args.size} "
            f"--batch {args.batch} --workers {args.workers} --rounds {args.rounds}`\n\n"
            "| round | ours (images/s) | peer (images/s) | ours / peer |\n| --- | --- | --- | --- |\n"
            + "".join(f"| {i + 1} | {a:.0f} | {b:.0f} | {r:.3f} |\n" for i, (a, b, r) in enumerate(rows))
            + f"\nMedian ratio ours / peer: **{ratio:.3f}**. Decoding {min(len(paths), 256)} of the files at "
              f"{args.size} px in one process: {with_draft:.0f} images/s with Pillow's draft mode, {without:.0f} "
              f"without ({with_draft / without:.2f}x).\n")
    append_section(text, args.results)
    print(text)


if __name__ == "__main__":
    main()
