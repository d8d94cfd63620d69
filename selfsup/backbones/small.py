"""The small CPU convnet of the benchmark protocol (benchmarks/run.py cpu-simclr, cpu-methods)."""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallConvNet(nn.Module):
    """Four conv-BN-ReLU blocks of widths 32-64-128-256, 2x2 max-pool between, global average pool."""

    stage_names = ("block1", "block2", "block3", "block4")

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        chans = (in_channels, *widths)
        self.blocks = nn.ModuleList(_block(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.out_dim = widths[-1]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1].mean(dim=(2, 3))
