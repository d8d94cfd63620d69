"""The small CPU convnet of the benchmark protocol (benchmarks/run.py cpu-simclr, cpu-methods)."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.backbones.base import Backbone, StageInfo, conv_bn_relu, scaled

WIDTHS = (32, 64, 128, 256)


class SmallConvNet(Backbone):
    """Four conv3x3-BN-ReLU blocks of widths 32-64-128-256 (times ``width``), 2x2 max-pool (ceil mode) between,
    global average pool. Stages ``block1..block4`` at strides 1, 2, 4, 8."""

    def __init__(self, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        widths = tuple(scaled(w, width) for w in WIDTHS)
        chans = (in_channels, *widths)
        self.blocks = nn.ModuleList(conv_bn_relu(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.in_channels, self.out_dim = in_channels, widths[-1]
        self.stage_info = [StageInfo(f"block{i + 1}", w, 2**i) for i, w in enumerate(widths)]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            outs.append(x)
        return outs
