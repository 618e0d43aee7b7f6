"""Our trainer against the way most CIFAR repositories train: PIL images, per-image augmentation
in a torch.utils.data.Dataset, a DataLoader with worker processes (written here from scratch, no
torchvision), and a bare loop, all on the same model, batch size and data, in one run.

    python benchmarks/bench_peer.py [--model resnet20] [--batch 128] [--steps 10] [--workers 2] [--device cpu]

Reports images/s for: the bare loop over pre-normalised tensors (no augmentation; in the
channels_last layout our augmentation also produces), our trainer (tensor augmentation on the
training device), and the PIL + DataLoader pipeline. On CUDA every contender runs the model the
same way (bf16 autocast, channels_last), so the ratios measure the data pipelines. Appends to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import random
import statistics
import time

import numpy as np
import torch
from PIL import Image

from bench_speed import bare_images_per_s, make_model, ours_images_per_s, plain_step, rotate_rounds, sync
from ccn.dist import configure_backends
from results_file import append_section

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


def peer_images_per_s(model, images_hwc, labels, batch, steps, workers, device=torch.device("cpu")) -> float:
    """The DataLoader pipeline; the first batch (worker start-up, warm-up step) is not timed."""
    loader = torch.utils.data.DataLoader(PilCifar(images_hwc, labels), batch_size=batch, shuffle=True,
                                         num_workers=workers, drop_last=True, persistent_workers=False,
                                         pin_memory=device.type == "cuda")
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()
    step = plain_step(model, optimizer, device)
    for i, (x, y) in enumerate(loader):
        if i == 1:
            sync(device)
            start = time.perf_counter()
        step(x.to(device, non_blocking=True, memory_format=memory_format), y.to(device, non_blocking=True))
        if i == steps:
            break
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def measure_peer(model_name: str, batch: int, steps: int, rounds: int, workers: int,
                 device: torch.device = torch.device("cpu")) -> dict:
    """Images/s per contender (bare, ours, peer) and round, and their medians."""
    configure_backends(device, deterministic=False)  # cudnn.benchmark on CUDA for every contender, as in training
    g = torch.Generator().manual_seed(0)
    n = batch * (steps + 1)  # the peer's first batch is its untimed warm-up
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()

    def fresh():
        return make_model(model_name, 10)

    contenders = {
        "bare": lambda: bare_images_per_s(fresh(), images, labels, batch, steps, device, channels_last=True),
        "ours": lambda: ours_images_per_s(fresh(), images, labels, batch, steps, device),
        "peer": lambda: peer_images_per_s(fresh(), hwc, labels.numpy(), batch, steps, workers, device),
    }
    runs = rotate_rounds(contenders, rounds)
    return {"images_per_s": runs, "median": {k: statistics.median(v) for k, v in runs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    args = parser.parse_args()
    device = torch.device(args.device)
    found = measure_peer(args.model, args.batch, args.steps, args.rounds, args.workers, device)
    runs, med = found["images_per_s"], found["median"]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    text = "\n".join([
        f"\n## Peer pipeline: {args.model}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds "
        f"({datetime.date.today()})",
        f"Machine: {platform.node()} {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{where}. Command: `python benchmarks/bench_peer.py --model {args.model} --batch {args.batch} --device "
        f"{args.device}` (random 32x32 images; PIL + DataLoader with {args.workers} workers).",
        "",
        "| pipeline | images/s (median) | ratio to bare loop | ratio to peer |",
        "| --- | --- | --- | --- |",
        *(f"| {name} | {med[name]:.0f} | {med[name] / med['bare']:.3f} | {med[name] / med['peer']:.3f} |"
          for name in ("bare", "ours", "peer")),
        f"Raw images/s per round: {', '.join(f'{k}: {[round(v) for v in vs]}' for k, vs in runs.items())}.",
        "",
    ])
    print(text)
    append_section(text)


if __name__ == "__main__":
    main()
