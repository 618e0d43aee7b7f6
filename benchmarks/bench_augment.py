"""Cost and variety of the strong augmentation policies (data.augment), ours against kornia's.

    python benchmarks/bench_augment.py [--batch 256] [--steps 10] [--rounds 5] [--device cpu] [--no-write]

1. time per training batch (batch x 3 x 32 x 32 uint8) of crop+flip alone and of crop+flip followed
   by each policy: ours (ccn.data.policies) and kornia.augmentation.auto's (uint8 -> float -> uint8
   conversions included, since our batches are uint8), next to one resnet20 training step on the
   same batch for scale; contenders alternate in rotating order over the rounds, medians reported and
   the ratios to crop+flip as medians of per-round (back-to-back) ratios;
2. distinct outputs among 64 copies of one real image (per-image draws give many; one draw per
   batch gives few), mean over 5 batches;
3. how far kornia's operations, as its policies apply them, are from PIL's on 8 real images (ours
   are compared with PIL in tests/test_policies.py).
Appends a section to benchmarks/RESULTS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ccn.data.augment import Augment
from ccn.data.policies import AutoAugment, RandAugment, TrivialAugment
from results_file import append_section

CALTECH = Path(os.environ.get("CCN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "caltech101"

try:
    import kornia
    import kornia.augmentation as K
    from kornia.augmentation import auto as kornia_auto
except ImportError:  # the comparison is optional: kornia is no dependency of ccn
    kornia = None


def real_images(n: int) -> torch.Tensor | None:
    """Up to n Caltech-101 images (the first of n categories) at 32x32, or None when absent."""
    from ccn.data.images import decode_image  # the allow-listed reader ccn itself uses
    paths = sorted(glob.glob(str(CALTECH / "101_ObjectCategories" / "*" / "image_0001.jpg")))[:n]
    if not paths:
        return None
    arrays = [decode_image(Path(p), 32) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def kornia_policy(module):
    """A kornia policy on our uint8 batches: to float in [0, 1], the policy, back to uint8."""
    def run(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        out = module(images.float() / 255)
        return (out.clamp(0, 1) * 255).round().to(torch.uint8)
    return run


def contenders(device) -> dict:
    ours = {"crop+flip": Augment(4, True, 0),
            "+ ours autoaugment": Augment(4, True, 0, AutoAugment()),
            "+ ours randaugment (2, 9)": Augment(4, True, 0, RandAugment(2, 9)),
            "+ ours trivialaugment": Augment(4, True, 0, TrivialAugment())}
    if kornia is not None:
        ours.update({
            "+ kornia autoaugment": Augment(4, True, 0, kornia_policy(kornia_auto.AutoAugment("cifar10").to(device))),
            "+ kornia randaugment (2, 9)": Augment(4, True, 0, kornia_policy(kornia_auto.RandAugment(2, 9).to(device))),
            "+ kornia trivialaugment": Augment(4, True, 0, kornia_policy(kornia_auto.TrivialAugment().to(device))),
        })
    return ours


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_augment(augment, images: torch.Tensor, steps: int, device) -> float:
    """Seconds per batch, after one untimed warm-up call."""
    generator = torch.Generator(device=device)
    augment(images, generator.manual_seed(0))
    sync(device)
    start = time.perf_counter()
    for step in range(steps):
        augment(images, generator.manual_seed(step + 1))
    sync(device)
    return (time.perf_counter() - start) / steps


def time_train_step(images: torch.Tensor, steps: int, device) -> float:
    """Seconds per resnet20 training step (SGD, cross-entropy) on the batch, for scale."""
    from ccn.models import create_backbone
    torch.manual_seed(0)
    backbone = create_backbone("resnet20")
    net = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.num_features, 10)).to(
        device, memory_format=torch.channels_last)
    x = (images.float() / 255).contiguous(memory_format=torch.channels_last)
    y = torch.arange(len(images), device=device) % 10
    net(x)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)

    def step():
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def distinct_outputs(policy, image: torch.Tensor, device, batches: int = 5) -> float:
    """Mean number of distinct images among 64 augmented copies of one image (the policy alone)."""
    copies = image[None].expand(64, -1, -1, -1).contiguous().to(device)
    counts = []
    for seed in range(batches):
        torch.manual_seed(seed)  # kornia draws from the global generator
        out = policy(copies, torch.Generator(device=device).manual_seed(seed))
        counts.append(len(torch.unique(out.flatten(1), dim=0)))
    return statistics.mean(counts)


def kornia_vs_pil(images: torch.Tensor) -> list[tuple[str, float, float]]:
    """(operation, mean |kornia - PIL| in levels, % of values off by more than 1): kornia's
    augmentation modules as its auto policies build them, each at one fixed magnitude."""
    from PIL import Image, ImageEnhance, ImageOps
    pil = [Image.fromarray(a) for a in images.permute(0, 2, 3, 1).numpy()]
    x = images.float() / 255
    cases = [
        ("equalize", K.RandomEqualize(p=1), ImageOps.equalize),
        ("autocontrast", K.RandomAutoContrast(p=1), ImageOps.autocontrast),
        ("invert", K.RandomInvert(p=1), ImageOps.invert),
        ("posterize 4 bits", K.RandomPosterize((4, 4), p=1), lambda im: ImageOps.posterize(im, 4)),
        ("solarize at 128", K.RandomSolarize(0.0, 0.0, p=1), lambda im: ImageOps.solarize(im, 128)),
        ("sharpness 1.9", K.RandomSharpness((1.9, 1.9), p=1), lambda im: ImageEnhance.Sharpness(im).enhance(1.9)),
        ("brightness 1.5", K.RandomBrightness((1.5, 1.5), p=1), lambda im: ImageEnhance.Brightness(im).enhance(1.5)),
        ("contrast 1.5", K.RandomContrast((1.5, 1.5), p=1), lambda im: ImageEnhance.Contrast(im).enhance(1.5)),
        ("color 1.5 (kornia: saturation)", K.RandomSaturation((1.5, 1.5), p=1),
         lambda im: ImageEnhance.Color(im).enhance(1.5)),
        ("rotate 30 deg (kornia default: bilinear)", K.RandomRotation((30.0, 30.0), p=1),
         lambda im: im.rotate(30, resample=Image.NEAREST)),
        ("translate_x 5 px (kornia: bilinear)", K.RandomTranslate((5 / 32, 5 / 32), p=1, align_corners=True),
         lambda im: im.transform(im.size, Image.AFFINE, (1, 0, -5, 0, 1, 0), Image.NEAREST)),
    ]
    rows = []
    for name, module, reference in cases:
        theirs = (module(x).clamp(0, 1) * 255).round().to(torch.int32)
        ref = torch.from_numpy(np.stack([np.asarray(reference(im)) for im in pil])).permute(0, 3, 1, 2).to(torch.int32)
        diff = (theirs - ref).abs().float()
        rows.append((name, diff.mean().item(), 100 * (diff > 1).float().mean().item()))
    return rows


def rotate_rounds(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Run every contender once per round, rotating the order so that none always runs first."""
    names = list(fns)
    runs: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(fns[name]())
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    load_before = " ".join(f"{v:.1f}" for v in os.getloadavg())
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(device)
    real = real_images(8)
    policies = contenders(device)
    fns = {name: (lambda a=a: time_augment(a, images, args.steps, device)) for name, a in policies.items()}
    fns["resnet20 training step (no augmentation)"] = lambda: time_train_step(images, max(1, args.steps // 5), device)
    runs = rotate_rounds(fns, args.rounds)
    med = {k: statistics.median(v) for k, v in runs.items()}
    base = runs["crop+flip"]
    step = med["resnet20 training step (no augmentation)"]
    one = (real[0] if real is not None else images[0].cpu())
    kinds = {"ours autoaugment": AutoAugment(), "ours randaugment (2, 9)": RandAugment(2, 9),
             "ours trivialaugment": TrivialAugment()}
    if kornia is not None:
        kinds.update({name.lstrip("+ "): policies[name].policy for name in policies if "kornia" in name})
    distinct = {name: distinct_outputs(p, one, device) for name, p in kinds.items()}

    where = "a Caltech-101 image" if real is not None else "a random image"
    lines = [
        f"\n## Strong augmentation: cost per batch of {args.batch} at 32x32, {args.steps} batches x {args.rounds} "
        f"rounds ({datetime.date.today()})",
        f"Machine: {platform.node()} {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"kornia {kornia.__version__ if kornia else 'absent'}, device {device}. Command: "
        f"`python benchmarks/bench_augment.py --batch {args.batch} --steps {args.steps} --rounds {args.rounds} "
        f"--device {args.device}` (random uint8 images; one untimed warm-up call per contender and round). "
        f"Load average before / after: {load_before} / {' '.join(f'{v:.1f}' for v in os.getloadavg())} "
        "(the machine is shared).",
        "",
        "| what | ms per batch (median) | time / crop+flip (median of per-round ratios) | share of a resnet20 step |",
        "| --- | --- | --- | --- |",
    ]
    for name, runs_of in runs.items():
        ratio = sorted(t / b for t, b in zip(runs_of, base))
        lines.append(f"| {name} | {med[name] * 1000:.1f} | {statistics.median(ratio):.2f} "
                     f"({ratio[0]:.2f}-{ratio[-1]:.2f}) | {100 * med[name] / step:.1f} % |")
    lines += ["", f"Distinct outputs among 64 copies of {where} (the policy alone, mean of 5 batches): "
              + ", ".join(f"{k} {v:.1f}" for k, v in distinct.items()) + "."]
    if kornia is not None and real is not None:
        rows = kornia_vs_pil(real.cpu())
        lines += ["", "kornia's operations (as its auto policies build them) against PIL on 8 Caltech-101 images "
                  "at 32x32, mean |difference| in levels and % of values off by more than 1 (ours: 0 and 0 % for "
                  "every operation, tests/test_policies.py): "
                  + "; ".join(f"{n} {m:.2f} / {f:.1f} %" for n, m, f in rows) + "."]
    lines.append(f"Raw ms per batch per round: "
                 + ", ".join(f"{k}: {[round(v * 1000, 1) for v in vs]}" for k, vs in runs.items()) + ".")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        append_section(text)


if __name__ == "__main__":
    main()
