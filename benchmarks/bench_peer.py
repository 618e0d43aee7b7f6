"""Our trainer against the way most CIFAR repositories train: PIL images, per-image augmentation
in a torch.utils.data.Dataset, a DataLoader with worker processes (written here from scratch, no
torchvision), and a bare loop, all on the same model, batch size and data, in one run.

    python benchmarks/bench_peer.py [--model resnet20] [--batch 128] [--steps 10] [--workers 2]

Reports images/s for: the bare loop over pre-normalised tensors (no augmentation), our trainer
(tensor augmentation on the training device), and the PIL + DataLoader pipeline. Appends to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from bench_speed import bare_images_per_s, make_model, ours_images_per_s

MEAN, STD = np.array([0.49, 0.48, 0.45], np.float32), np.array([0.25, 0.24, 0.26], np.float32)


class PilCifar(torch.utils.data.Dataset):
    """Per-image PIL augmentation: pad by 4, random 32x32 crop, random flip, to a normalised tensor."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = Image.fromarray(self.images[i])
        padded = Image.new("RGB", (40, 40))
        padded.paste(image, (4, 4))
        x, y = random.randint(0, 8), random.randint(0, 8)
        image = padded.crop((x, y, x + 32, y + 32))
        if random.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = (np.asarray(image, np.float32) / 255 - MEAN) / STD
        return torch.from_numpy(array.transpose(2, 0, 1).copy()), int(self.labels[i])


def peer_images_per_s(model, images_hwc, labels, batch, steps, workers) -> float:
    loader = torch.utils.data.DataLoader(PilCifar(images_hwc, labels), batch_size=batch, shuffle=True,
                                         num_workers=workers, drop_last=True, persistent_workers=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()
    start = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i == steps:
            break
        loss = F.cross_entropy(model(x)["z"], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    n = args.batch * args.steps
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    runs: dict[str, list] = {"bare": [], "ours": [], "peer": []}
    for r in range(args.rounds):  # rotate the order so that no contender always runs first
        order = ["bare", "ours", "peer"][r % 3:] + ["bare", "ours", "peer"][:r % 3]
        for name in order:
            model = make_model(args.model, 10)
            if name == "bare":
                runs[name].append(bare_images_per_s(model, images, labels, args.batch, args.steps))
            elif name == "ours":
                runs[name].append(ours_images_per_s(model, images, labels, args.batch, args.steps))
            else:
                runs[name].append(peer_images_per_s(model, hwc, labels.numpy(), args.batch, args.steps, args.workers))
    med = {k: statistics.median(v) for k, v in runs.items()}
    text = "\n".join([
        f"\n## Peer pipeline: {args.model}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds "
        f"({datetime.date.today()})",
        f"Machine: {platform.node()} {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"CPU. Command: `python benchmarks/bench_peer.py` (random 32x32 images; PIL + DataLoader with "
        f"{args.workers} workers).",
        "",
        "| pipeline | images/s (median) | ratio to bare loop | ratio to peer |",
        "| --- | --- | --- | --- |",
        *(f"| {name} | {med[name]:.0f} | {med[name] / med['bare']:.3f} | {med[name] / med['peer']:.3f} |"
          for name in ("bare", "ours", "peer")),
        f"Raw images/s per round: {', '.join(f'{k}: {[round(v) for v in vs]}' for k, vs in runs.items())}.",
        "",
    ])
    print(text)
    with open(Path(__file__).with_name("RESULTS.md"), "a") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
