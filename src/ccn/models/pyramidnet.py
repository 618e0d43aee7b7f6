"""PyramidNet with bottleneck blocks (Han et al. 2017) and ShakeDrop (Yamada et al. 2018).

Channels grow by alpha / (3 n) per block instead of doubling per stage. PyramidNet-272 with
alpha=200 and ShakeDrop is the strongest CIFAR-100 network of the paper's time without extra
data, hence our guess for the backbone behind its 11.56 % error (the paper does not say).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ccn.models.base import PreActTrunk
from ccn.models.registry import register_backbone


class _ShakeDropFunction(torch.autograd.Function):
    """Forward: scale by (gate + a - gate * a), a ~ U[-1, 1]; backward: by (gate + b - gate * b), b ~ U[0, 1]."""

    @staticmethod
    def forward(ctx, x, keep_prob):
        shape = (x.shape[0], 1, 1, 1)
        # drawn and combined in float32: under bf16 autocast a keep probability such as 0.999 would round
        # to 1.0 (no block ever dropped), and a kept block's 1 + a - a would not come out as exactly 1
        gate = torch.bernoulli(torch.full(shape, keep_prob, device=x.device, dtype=torch.float32))
        alpha = torch.empty(shape, device=x.device, dtype=torch.float32).uniform_(-1, 1)
        ctx.save_for_backward(gate)
        return x * (gate + alpha - gate * alpha).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (gate,) = ctx.saved_tensors
        beta = torch.empty_like(gate).uniform_(0, 1)
        return grad * (gate + beta - gate * beta).to(grad.dtype), None


class ShakeDrop(nn.Module):
    def __init__(self, drop_prob: float):
        super().__init__()
        self.keep_prob = 1.0 - drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.keep_prob < 1.0:
            return _ShakeDropFunction.apply(x, self.keep_prob)
        return x * self.keep_prob  # the expectation of the training-time scale


class PyramidBottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, drop_prob: float):
        super().__init__()
        c_out = planes * self.expansion
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.Conv2d(c_in, planes, 1, bias=False),
            nn.BatchNorm2d(planes), nn.ReLU(inplace=True), nn.Conv2d(planes, planes, 3, stride, 1, bias=False),
            nn.BatchNorm2d(planes), nn.ReLU(inplace=True), nn.Conv2d(planes, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shake = ShakeDrop(drop_prob) if drop_prob > 0 else nn.Identity()
        self.stride, self.extra = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shake(self.body(x))
        skip = F.avg_pool2d(x, 2, ceil_mode=True) if self.stride > 1 else x
        if self.extra > 0:  # zero-padded channels: the shortcut stays parameter-free
            skip = F.pad(skip, (0, 0, 0, 0, 0, self.extra))
        return out + skip


class PyramidNet(PreActTrunk):
    def __init__(self, depth: int = 272, alpha: int = 200, shakedrop: float = 0.5):
        super().__init__()
        if (depth - 2) % 9:
            raise ValueError(f"bottleneck PyramidNet depth must be 9n+2 (110, 164, 200, 272), got {depth}")
        n = (depth - 2) // 9
        total, step = 3 * n, alpha / (3 * n)
        stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        blocks, c_in, width = [], 16, 16.0
        for i in range(total):
            width += step
            stride = 2 if i in (n, 2 * n) else 1
            drop = shakedrop * (i + 1) / total  # linear decay rule: deeper blocks are dropped more often
            blocks.append(PyramidBottleneck(c_in, int(round(width)), stride, drop))
            c_in = int(round(width)) * PyramidBottleneck.expansion
        self._assemble(stem, blocks, c_in)


register_backbone("pyramidnet")(PyramidNet)
register_backbone("pyramidnet272")(lambda alpha=200, shakedrop=0.5: PyramidNet(272, alpha, shakedrop))
register_backbone("pyramidnet110")(lambda alpha=48, shakedrop=0.0: PyramidNet(110, alpha, shakedrop))
