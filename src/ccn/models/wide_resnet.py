"""Wide ResNet (Zagoruyko & Komodakis 2016): depth 6n+4, widths 16k/32k/64k, pre-activation blocks."""

from __future__ import annotations

from ccn.models.base import PreActTrunk
from ccn.models.registry import register_backbone
from ccn.models.resnet_cifar import PreActBlock, conv3x3


class WideResNet(PreActTrunk):
    def __init__(self, depth: int = 28, widen_factor: int = 10):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n+4 (16, 22, 28, 40), got {depth}")
        n = (depth - 4) // 6
        blocks, c_in = [], 16
        for stage, width in enumerate((16 * widen_factor, 32 * widen_factor, 64 * widen_factor)):
            for i in range(n):
                blocks.append(PreActBlock(c_in, width, 2 if stage > 0 and i == 0 else 1))
                c_in = width
        self._assemble(conv3x3(3, 16), blocks, c_in)


register_backbone("wide_resnet")(WideResNet)
register_backbone("wrn28_10")(lambda: WideResNet(28, 10))
register_backbone("wrn16_4")(lambda: WideResNet(16, 4))
