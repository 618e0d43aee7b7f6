"""CIFAR ResNets (He et al. 2016, section 4.2: 6n+2 layers, 16/32/64 channels, parameter-free
shortcuts) and the pre-activation ResNet-18 (He et al. 2016b) used by most CIFAR repositories."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ccn.models.base import Backbone, PreActTrunk, kaiming_init
from ccn.models.registry import register_backbone


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)


class PadShortcut(nn.Module):
    """Option A shortcut: subsample by `stride` and zero-pad the new channels (no parameters)."""

    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra, self.stride = extra_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
        changes_shape = stride != 1 or c_in != c_out
        self.shortcut = PadShortcut(c_out - c_in, stride) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(Backbone):
    def __init__(self, depth: int = 20, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        widths = [width, 2 * width, 4 * width]
        self.stem = nn.Sequential(conv3x3(3, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        layers, c_in = [], width
        for stage, c_out in enumerate(widths):
            for i in range(n):
                layers.append(BasicBlock(c_in, c_out, 2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.num_features = c_in
        kaiming_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x)).mean(dim=(2, 3))


for _depth in (20, 32, 44, 56, 110):
    register_backbone(f"resnet{_depth}")(lambda width=16, _d=_depth: CifarResNet(_d, width))


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), conv3x3(c_in, c_out, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), conv3x3(c_out, c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        return self.conv2(F.relu(self.bn2(out))) + skip


class PreActResNet18(PreActTrunk):
    def __init__(self, width: int = 64):
        super().__init__()
        blocks, c_in = [], width
        for stage, mult in enumerate((1, 2, 4, 8)):
            for i in range(2):
                blocks.append(PreActBlock(c_in, width * mult, 2 if stage > 0 and i == 0 else 1))
                c_in = width * mult
        self._assemble(conv3x3(3, width), blocks, c_in, he_init=False)  # PyTorch's default init, as usual for it


register_backbone("preact_resnet18")(PreActResNet18)
