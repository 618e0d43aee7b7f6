"""The CUDA paths (bf16 autocast, channels_last, data resident on the GPU); skipped without CUDA."""

import json

import pytest
import torch

from conftest import run_cli

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_batches_and_augmentation_stay_on_the_gpu():
    from ccn.data.augment import Augment, Normalize
    from ccn.data.loader import TensorBatches
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, device="cuda")
    y = torch.arange(64, device="cuda") % 4
    loader = TensorBatches(x, y, 16, Normalize([0.5] * 3, [0.25] * 3).cuda(), Augment(2, True, 4),
                           channels_last=True)
    for images, labels in loader.epoch(0):
        assert images.is_cuda and labels.is_cuda and images.is_contiguous(memory_format=torch.channels_last)


def test_ccn_run_on_cuda_with_bf16(tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--set", "device=cuda", "--set", "train.epochs=3", "--set", "train.bf16=true",
                     "--set", "train.channels_last=true", "--set", "train.progress=false", "--out", str(out))
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["device"].startswith("cuda") and results["top1"] > 0.5


def test_heads_agree_between_cpu_and_cuda():
    from ccn.heads import ThreeLevelHead
    torch.manual_seed(0)
    head = ThreeLevelHead(8, [[0, 3], [1, 2, 4]])
    h = torch.randn(5, 8)
    cpu = head.scores(head(h), "soft")
    head = head.cuda()
    gpu = head.scores(head(h.cuda()), "soft").cpu()
    assert torch.allclose(cpu, gpu, atol=1e-5)


def test_augmentation_operations_give_the_same_pixels_on_cuda_as_on_cpu():
    from ccn.data.policies import OPERATIONS, RandAugment
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    values = {"posterize": torch.arange(16) % 7 + 2.0, "solarize": torch.linspace(0, 256, 16)}
    for name, op in OPERATIONS.items():
        v = values.get(name, torch.linspace(-0.9, 0.9, 16) * (30 if name.startswith(("rotate", "translate")) else 1))
        if name in ("brightness", "color", "contrast", "sharpness"):
            v = 1 + v
        v = v.double()
        assert torch.equal(op(x.cuda(), v.cuda()).cpu(), op(x, v)), name
    policy = RandAugment(2, 9)
    a = policy(x.cuda(), torch.Generator(device="cuda").manual_seed(1))
    b = policy(x.cuda(), torch.Generator(device="cuda").manual_seed(1))
    assert a.is_cuda and torch.equal(a, b)


# digits, 40 images per class, groups after epoch 1, split again after epoch 2: deterministic mode,
# the weight average and dropout, all on the GPU
GPU_RUN = ["--set", "device=cuda", "--set", "data.train_per_class=40", "--set", "data.test_per_class=10",
           "--set", "model.width=8", "--set", "train.epochs=4", "--set", "train.deterministic=true",
           "--set", "train.progress=false", "--set", "model.dropout=0.2", "--set", "method.depth=2",
           "--set", "train.ema=0.9"]


def test_deterministic_depth2_run_resumes_bit_identically_on_cuda(tmp_path):
    import os
    import subprocess
    import sys
    from safetensors.torch import load_file
    reference = tmp_path / "ref"
    result = run_cli("train", *GPU_RUN, "--out", str(reference))
    assert result.returncode == 0, result.stderr  # deterministic mode needs CUBLAS_WORKSPACE_CONFIG on CUDA
    results = json.loads((reference / "results.json").read_text())
    assert results["device"].startswith("cuda") and results["hierarchy"]["how"]["depth"] == 2
    assert results["model_weights"] == "ema"
    killed = tmp_path / "killed"
    env = {**os.environ, "CCN_FAULT": "step-42"}  # in epoch 4, after the split
    run = subprocess.run([sys.executable, "-m", "ccn", "train", *GPU_RUN, "--out", str(killed)],
                         capture_output=True, text=True, env=env)
    assert run.returncode == -9, run.stderr
    resumed = run_cli("train", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    ours, theirs = load_file(str(killed / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_profile_sums_and_scores_stay_on_the_gpu():
    from ccn.hierarchy.affinity import class_profile_sums
    probs = torch.softmax(torch.randn(32, 5, device="cuda"), 1)
    sums, counts = class_profile_sums(probs, torch.arange(32, device="cuda") % 5, 5)
    assert sums.is_cuda and counts.is_cuda and sums.dtype == torch.float64


def test_shakedrop_pyramidnet_trains_a_step_under_bf16_autocast():
    from ccn.models import create_backbone
    model = create_backbone("pyramidnet", depth=20, alpha=16, shakedrop=0.5).cuda()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        features = model(x)
    features.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
