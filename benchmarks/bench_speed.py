"""Speed benchmarks, each a ratio measured within one run (these machines are noisy).

    python benchmarks/bench_speed.py [--model resnet20] [--batch 256] [--steps 12] [--rounds 3]

1. our trainer (Trainer.train_epoch over TensorBatches, augmentation included) against a bare
   PyTorch loop (forward, cross-entropy, backward, SGD step) over the same model, batch size and
   pre-loaded, pre-normalised tensors;
2. the three-level CCN head against the flat head, per training step, same backbone;
3. the clustering step (distances + average linkage + cut) for 100 and 1,000 classes.
Timings alternate between the contenders in `--rounds` rounds, in rotating order; medians are reported.
Appends a section to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ccn.config import TrainConfig
from ccn.data.augment import Augment, Normalize
from ccn.data.loader import TensorBatches
from ccn.heads import FlatHead, ThreeLevelHead
from ccn.hierarchy import build_hierarchy
from ccn.models import Classifier, create_backbone
from ccn.train import Trainer


def make_model(name: str, num_classes: int, groups=None) -> Classifier:
    torch.manual_seed(0)
    backbone = create_backbone(name)
    head = FlatHead(backbone.num_features, num_classes)
    if groups is not None:
        head = ThreeLevelHead(backbone.num_features, groups, flat=head.flat)
    return Classifier(backbone, head)


def ours_images_per_s(model, images, labels, batch, steps) -> float:
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=0.05, progress=False)
    norm = Normalize([0.49, 0.48, 0.45], [0.25, 0.24, 0.26])
    loader = TensorBatches(images[: batch * steps], labels[: batch * steps], batch, norm, Augment(4, True, 0))
    trainer = Trainer(model, cfg, torch.device("cpu"), steps)
    return trainer.train_epoch(loader, epoch=1)["images_per_s"]


def bare_images_per_s(model, images, labels, batch, steps) -> float:
    x_all = (images[: batch * steps].float() / 255 - 0.5) / 0.25
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()
    start = time.perf_counter()
    for i in range(steps):
        x, y = x_all[i * batch:(i + 1) * batch], labels[i * batch:(i + 1) * batch]
        loss = F.cross_entropy(model(x)["z"], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - start)


def clustering_seconds(num_classes: int) -> float:
    rng = np.random.default_rng(0)
    S = rng.dirichlet(np.full(num_classes, 0.1), size=num_classes)
    start = time.perf_counter()
    build_hierarchy(S, [str(i) for i in range(num_classes)], metric="l1")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--classes", type=int, default=100)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    n = args.batch * args.steps
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, args.classes, (n,), generator=g)
    groups = [list(range(k, args.classes, 10)) for k in range(10)]
    runs = {"bare": [], "ours": [], "flat head": [], "ccn head": []}
    contenders = {
        "bare": lambda: bare_images_per_s(make_model(args.model, args.classes), images, labels, args.batch, args.steps),
        "ours": lambda: ours_images_per_s(make_model(args.model, args.classes), images, labels, args.batch, args.steps),
        "ccn head": lambda: ours_images_per_s(make_model(args.model, args.classes, groups), images, labels,
                                              args.batch, args.steps),
    }
    names = list(contenders)
    for r in range(args.rounds):  # rotate the order so that no contender always runs first
        for name in names[r % 3:] + names[:r % 3]:
            runs[name].append(contenders[name]())
    runs["flat head"] = runs["ours"]
    med = {k: statistics.median(v) for k, v in runs.items()}
    cluster = {c: min(clustering_seconds(c) for _ in range(3)) for c in (100, 1000)}
    lines = [
        f"\n## Speed: {args.model}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds "
        f"({datetime.date.today()})",
        f"Machine: {platform.node()} {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        "CPU. Command: `python benchmarks/bench_speed.py` (random uint8 images 32x32, "
        f"{args.classes} classes).",
        "",
        "| what | images/s (median) | ratio |",
        "| --- | --- | --- |",
        f"| bare PyTorch loop (no augmentation) | {med['bare']:.0f} | 1.00 |",
        f"| our trainer (crop+flip augmentation included) | {med['ours']:.0f} | {med['ours'] / med['bare']:.3f} of bare |",
        f"| our trainer, three-level CCN head (10 groups) | {med['ccn head']:.0f} | "
        f"{med['flat head'] / med['ccn head']:.3f} time per step of the flat head |",
        "",
        f"Clustering step (L1 distances + average linkage + cut, best of 3): 100 classes "
        f"{cluster[100] * 1000:.1f} ms, 1,000 classes {cluster[1000] * 1000:.0f} ms.",
        f"Raw images/s per round: {', '.join(f'{k}: {[round(v) for v in vs]}' for k, vs in runs.items())}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    results = Path(__file__).with_name("RESULTS.md")
    if not results.exists():
        results.write_text("# Benchmark results\n\nEvery section says the machine, torch version, date and command.\n")
    with open(results, "a") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
