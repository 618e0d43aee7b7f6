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
