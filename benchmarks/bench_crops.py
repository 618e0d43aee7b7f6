"""ImageNet's crops (data.crop=random_resized, ccn.data.crops): fidelity against PIL and speed.

    python benchmarks/bench_crops.py [--images 64] [--size 224] [--rounds 5] [--threads 1] [--no-write]

On real photos (Caltech-101 JPEGs, the shared data folder):
1. training crop: our batched resampling (grid_sample) of torchvision's boxes against PIL's
   `img.resize((s, s), BILINEAR, box=box)`, which is what torchvision's RandomResizedCrop does to
   a PIL image, both from the same stored S x S square;
2. evaluation: our stored centre square (decoded with PIL's draft mode, shorter side to S in one
   resize) then the centred image_size crop, against torchvision's PIL pipeline on the full JPEG,
   Resize(S) (shorter side) then CenterCrop(image_size);
3. time per batch of the training crop: ours on the uint8 batch against a loop of PIL resizes (the
   work a DataLoader worker would do per image, decoding excluded); medians over rounds.
Differences are in 8-bit levels per pixel value. Appends a section to benchmarks/RESULTS.md unless --no-write.
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

from ccn.data.crops import CentreCrop, crop_boxes, resample_boxes, store_size
from ccn.data.images import decode_image
from results_file import append_section

CALTECH = Path(os.environ.get("CCN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "caltech101"


def photos(n: int) -> list[Path]:
    files = sorted((CALTECH / "101_ObjectCategories").glob("*/image_*.jpg"))
    return files[:: max(1, len(files) // n)][:n]


def pil_resize_centre_crop(path: Path, store: int, size: int) -> np.ndarray:
    """torchvision on PIL: Resize(store) on the shorter side, then CenterCrop(size)."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    if w <= h:
        new = (store, int(store * h / w))
    else:
        new = (int(store * w / h), store)
    image = image.resize(new, Image.BILINEAR)
    left, top = int(round((new[0] - size) / 2)), int(round((new[1] - size) / 2))
    return np.asarray(image.crop((left, top, left + size, top + size)))


def differences(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.int32) - b.astype(np.int32))
    return {"mean": float(d.mean()), "p99": float(np.percentile(d, 99)), "max": int(d.max()),
            "share_over_2": float((d > 2).mean())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size, store = args.size, store_size(args.size, 0.875)
    paths = photos(args.images)
    stored = np.stack([decode_image(p, store, "centre_crop") for p in paths])  # (N, S, S, 3)
    batch = torch.from_numpy(stored).permute(0, 3, 1, 2).contiguous()
    boxes = crop_boxes(len(paths), store, store, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0),
                       torch.device("cpu"))

    def ours_train():
        return resample_boxes(batch, boxes, size)

    def pil_train():
        return np.stack([np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR,
                                                                box=(l, t, l + w, t + h)))
                         for img, (t, l, h, w) in zip(stored, boxes.int().tolist())])

    train = differences(ours_train().permute(0, 2, 3, 1).numpy(), pil_train())
    ours_eval = CentreCrop(size, 0.875)(batch).permute(0, 2, 3, 1).numpy()
    evaluation = differences(ours_eval, np.stack([pil_resize_centre_crop(p, store, size) for p in paths]))
    times: dict[str, list[float]] = {"ours": [], "pil": []}
    for _ in range(args.rounds):
        for name, fn in (("ours", ours_train), ("pil", pil_train)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    load = os.getloadavg()[0]
    lines = [
        f"\n### ImageNet crops, {datetime.date.today()}",
        "",
        f"`python benchmarks/bench_crops.py --images {args.images} --size {size} --rounds {args.rounds} "
        f"--threads {args.threads}`; {len(paths)} Caltech-101 JPEGs stored as {store} px centre squares; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
        f"load average {load:.1f}.",
        "",
        "| comparison | mean abs difference (levels) | 99th percentile | max | share of values off by > 2 |",
        "| --- | --- | --- | --- | --- |",
        f"| training crop, ours vs PIL resize(box) on the same square | {train['mean']:.3f} | {train['p99']:.0f} | "
        f"{train['max']} | {100 * train['share_over_2']:.2f} % |",
        f"| evaluation, our stored square + centre crop vs PIL Resize({store}) + CenterCrop({size}) on the JPEG | "
        f"{evaluation['mean']:.3f} | {evaluation['p99']:.0f} | {evaluation['max']} | "
        f"{100 * evaluation['share_over_2']:.2f} % |",
        "",
        f"Training crop of a batch of {len(paths)}: ours {ms['ours']:.1f} ms, PIL loop {ms['pil']:.1f} ms "
        f"(ratio {ms['pil'] / ms['ours']:.2f}; medians of {args.rounds} rounds).",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        append_section(text)


if __name__ == "__main__":
    main()
