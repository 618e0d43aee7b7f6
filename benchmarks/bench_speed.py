"""Speed benchmarks, each a ratio measured within one run (these machines are noisy).

    python benchmarks/bench_speed.py [--model resnet20] [--batch 256] [--steps 8] [--rounds 8] [--device cpu|cuda]

1. our trainer (Trainer.train_epoch over TensorBatches, augmentation included) against a bare
   PyTorch loop (forward, cross-entropy, backward, SGD step) over the same model, batch size and
   pre-loaded, pre-normalised tensors, in the NCHW layout and in the channels_last layout that our
   augmentation produces;
2. the three-level CCN head against the flat head, per training step, same backbone;
3. the clustering step (distances + average linkage + cut) for 100 and 1,000 classes.
Timings alternate between the contenders in `--rounds` rounds, in rotating order; medians are
reported, and the two ratios that matter as the median of per-round (back-to-back) ratios.
Appends a section to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import numpy as np
import torch
from torch.nn import functional as F

from ccn.config import TrainConfig
from ccn.dist import configure_backends
from ccn.data.augment import Augment, Normalize
from ccn.data.loader import TensorBatches
from ccn.heads import FlatHead, ThreeLevelHead
from ccn.hierarchy import build_hierarchy
from ccn.models import Classifier, create_backbone
from ccn.train import Trainer
from results_file import append_section


def make_model(name: str, num_classes: int, groups=None) -> Classifier:
    torch.manual_seed(0)
    backbone = create_backbone(name)
    head = FlatHead(backbone.num_features, num_classes)
    if groups is not None:
        head = ThreeLevelHead(backbone.num_features, groups, flat=head.flat)
    return Classifier(backbone, head)


def ours_images_per_s(model, images, labels, batch, steps, device=torch.device("cpu")) -> float:
    """Trainer.train_epoch over TensorBatches (augmentation included), after one untimed warm-up step.
    The model and batches are channels_last, as the pipeline makes them; on CUDA, bf16 autocast."""
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=0.05, progress=False)
    model = model.to(device, memory_format=torch.channels_last)  # as the pipeline does, on CPU and CUDA
    norm = Normalize([0.49, 0.48, 0.45], [0.25, 0.24, 0.26]).to(device)
    images, labels = images.to(device), labels.to(device)
    trainer = Trainer(model, cfg, device, steps, steps)  # one epoch
    layout = dict(channels_last=True)
    warm_up = TensorBatches(images[:batch], labels[:batch], batch, norm, Augment(4, True, 0), **layout)
    trainer.train_epoch(warm_up, epoch=0)
    loader = TensorBatches(images[: batch * steps], labels[: batch * steps], batch, norm, Augment(4, True, 0),
                           **layout)
    return trainer.train_epoch(loader, epoch=1)["images_per_s"]


def plain_step(model, optimizer, device):
    """One training step as a plain loop writes it (bf16 autocast on CUDA, as our trainer uses)."""
    def step(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(x)["z"], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_images_per_s(model, images, labels, batch, steps, device=torch.device("cpu"),
                      channels_last: bool = False) -> float:
    """Forward, cross-entropy, backward, SGD step over pre-normalised tensors, after one untimed step.
    Our augmentation hands the model NHWC (channels_last) batches, which the CPU convolutions run
    faster than NCHW ones, so the fair bare loop for the overhead ratio is the channels_last one."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    x_all = ((images[: batch * steps].float() / 255 - 0.5) / 0.25).to(device, memory_format=memory_format)
    y_all = labels[: batch * steps].to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()
    step = plain_step(model, optimizer, device)
    step(x_all[:batch], y_all[:batch])  # warm-up, untimed
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch])
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def clustering_seconds(num_classes: int) -> float:
    rng = np.random.default_rng(0)
    S = rng.dirichlet(np.full(num_classes, 0.1), size=num_classes)
    start = time.perf_counter()
    build_hierarchy(S, [str(i) for i in range(num_classes)], metric="l1")
    return time.perf_counter() - start


def measure_speed(model_name: str, batch: int, steps: int, rounds: int, classes: int = 100,
                  device: torch.device = torch.device("cpu")) -> dict:
    """Images/s per contender and round, their medians, and the paired ratios (see the module doc)."""
    configure_backends(device, deterministic=False)  # cudnn.benchmark on CUDA for every contender, as in training
    g = torch.Generator().manual_seed(0)
    n = batch * steps
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    groups = [list(range(k, classes, 10)) for k in range(10)]

    def timed(fn, groups=None, **kw):
        return lambda: fn(make_model(model_name, classes, groups), images, labels, batch, steps, device=device, **kw)

    contenders = {
        "bare (NCHW)": timed(bare_images_per_s),
        "bare (channels_last)": timed(bare_images_per_s, channels_last=True),
        "ours": timed(ours_images_per_s),
        "ccn head": timed(ours_images_per_s, groups),
    }
    runs = rotate_rounds(contenders, rounds)
    # the ratios paired per round: both ran back to back, so slow drifts of the machine cancel
    return {"images_per_s": runs, "median": {k: statistics.median(v) for k, v in runs.items()},
            "head_cost": sorted(f / c for f, c in zip(runs["ours"], runs["ccn head"])),
            "overhead": sorted(o / b for o, b in zip(runs["ours"], runs["bare (channels_last)"]))}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (bf16 autocast on CUDA, as our trainer)")
    args = parser.parse_args()
    device = torch.device(args.device)
    found = measure_speed(args.model, args.batch, args.steps, args.rounds, args.classes, device)
    runs, med, head_cost, overhead = found["images_per_s"], found["median"], found["head_cost"], found["overhead"]
    cluster = {c: min(clustering_seconds(c) for _ in range(3)) for c in (100, 1000)}
    lines = [
        f"\n## Speed: {args.model}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds "
        f"({datetime.date.today()})",
        f"Machine: {platform.node()} {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{device_name(device)}. Command: `python benchmarks/bench_speed.py --model {args.model} --batch {args.batch} "
        f"--device {args.device}` (random uint8 images 32x32, "
        f"{args.classes} classes; one untimed warm-up step per contender and round).",
        "",
        "| what | images/s (median) | ratio |",
        "| --- | --- | --- |",
        f"| bare PyTorch loop, NCHW tensors (no augmentation) | {med['bare (NCHW)']:.0f} | "
        f"{med['bare (NCHW)'] / med['bare (channels_last)']:.3f} of the channels_last loop |",
        f"| bare PyTorch loop, channels_last tensors (no augmentation) | {med['bare (channels_last)']:.0f} | 1.00 |",
        f"| our trainer (crop+flip augmentation included) | {med['ours']:.0f} | "
        f"{statistics.median(overhead):.3f} of the channels_last loop (per round {overhead[0]:.3f}-{overhead[-1]:.3f}) |",
        f"| our trainer, three-level CCN head (10 groups) | {med['ccn head']:.0f} | "
        f"{statistics.median(head_cost):.3f} time per step of the flat head (per round "
        f"{head_cost[0]:.3f}-{head_cost[-1]:.3f}) |",
        "",
        f"Clustering step (L1 distances + average linkage + cut, best of 3): 100 classes "
        f"{cluster[100] * 1000:.1f} ms, 1,000 classes {cluster[1000] * 1000:.0f} ms.",
        f"Raw images/s per round: {', '.join(f'{k}: {[round(v) for v in vs]}' for k, vs in runs.items())}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    append_section(text)


def rotate_rounds(contenders: dict, rounds: int) -> dict[str, list[float]]:
    """Run every contender once per round, rotating the order so that none always runs first."""
    names = list(contenders)
    runs: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(contenders[name]())
    return runs


if __name__ == "__main__":
    main()
