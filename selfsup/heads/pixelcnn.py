"""The context network of Contrastive Predictive Coding on a grid of patch vectors (van den Oord, Li, Vinyals,
arXiv 2018; Hénaff et al., ICML 2020): PixelCNN-style masked convolutions (van den Oord, Kalchbrenner,
Kavukcuoglu, "Pixel Recurrent Neural Networks", ICML 2016), so that the context of grid row ``i`` sees only the
rows above it and itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskedConv2d(nn.Conv2d):
    """A ``kernel`` x ``kernel`` convolution (odd ``kernel``, the map's size kept) whose kernel rows below the
    centre are zero: output row ``i`` depends on input rows ``<= i`` only, every column of them."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3) -> None:
        super().__init__(in_channels, out_channels, kernel, padding=kernel // 2)
        mask = torch.ones_like(self.weight)
        mask[:, :, kernel // 2 + 1 :] = 0.0
        self.register_buffer("mask", mask, persistent=False)
        with torch.no_grad():
            self.weight.mul_(mask)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class CausalBlock(nn.Module):
    """A bottleneck residual block: ``x + conv1x1(relu(masked(relu(conv1x1(relu(x))))))``, ``dim`` -> ``hidden``
    -> ``dim`` channels, as the blocks of CPC v2's context network."""

    def __init__(self, dim: int, hidden: int, kernel: int = 3) -> None:
        super().__init__()
        self.reduce, self.mix = nn.Conv2d(dim, hidden, 1), MaskedConv2d(hidden, hidden, kernel)
        self.expand = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.expand(F.relu(self.mix(F.relu(self.reduce(F.relu(x))))))


class CausalContext(nn.Module):
    """``blocks`` :class:`CausalBlock` s over a grid ``(B, dim, G, G)``, then a ReLU: the context ``c[i, j]`` of
    every position, a function of the grid's rows ``<= i`` only (each block widens the view by a row above and
    a column to each side)."""

    def __init__(self, dim: int, hidden: int = 256, blocks: int = 5, kernel: int = 3) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(CausalBlock(dim, hidden, kernel) for _ in range(blocks)))

    def forward(self, z: Tensor) -> Tensor:
        return F.relu(self.blocks(z))
