"""What ``selfsup views`` shows: panels of exactly what a method's network sees and what it must predict.

A method's :meth:`~selfsup.methods.base.Method.views` builds its inputs with the same code as its training step
and returns them as :class:`Panel` rows, one image per shown sample (a puzzle's tiles count as one mosaic),
each with an optional caption (the target: a permutation, a neighbour's position, an angle, transform
parameters). The command draws the rows under the original images (:mod:`selfsup.use.views`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.data.ops.base import IMAGENET_MEAN, IMAGENET_STD, constant


@dataclass
class Panel:
    """One row of the views picture: ``images`` ``(N, 1 or 3, h, w)`` float in [0, 1], one per shown sample, and
    optionally one caption per image."""

    title: str
    images: Tensor
    captions: Sequence[str] | None = None


def stretch(x: Tensor) -> Tensor:
    """Every image ``(N, C, h, w)`` mapped linearly onto [0, 1] by its own minimum and maximum (all channels
    together): how a standardised or otherwise unbounded network input is shown."""
    flat = x.detach().float().flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-8)).view_as(x)


def unprepare(x: Tensor) -> Tensor:
    """Undo :func:`selfsup.data.views.prepare` (ImageNet normalisation): float [0, 1] images again."""
    mean = constant(IMAGENET_MEAN, torch.float32, x.device).view(-1, 1, 1)
    std = constant(IMAGENET_STD, torch.float32, x.device).view(-1, 1, 1)
    return (x.detach().float() * std + mean).clamp_(0.0, 1.0)


def mosaic(tiles: Tensor, columns: int, gap: int = 1, fill: float = 1.0) -> Tensor:
    """The tiles ``(N, T, C, h, w)`` of every sample laid out row-major, ``columns`` per row, ``gap`` pixels of
    ``fill`` between them: ``(N, C, H, W)``. Missing cells of the last row stay ``fill``."""
    n, t, c, h, w = tiles.shape
    rows = -(-t // columns)
    cells = F.pad(tiles.float(), (0, gap, 0, gap), value=fill)
    cells = torch.cat([cells, cells.new_full((n, rows * columns - t, *cells.shape[2:]), fill)], 1)
    grid = cells.view(n, rows, columns, c, h + gap, w + gap).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(n, c, rows * (h + gap), columns * (w + gap))[..., : rows * (h + gap) - gap,
                                                                      : columns * (w + gap) - gap]


def bars(histograms: torch.Tensor, height: int = 32) -> torch.Tensor:
    """Histograms ``(N, K)`` drawn as bar charts ``(N, 1, height, K)``: column ``k`` lit from the bottom up to
    ``height * y_k / max_k y_k`` (rounded), white on black."""
    level = (histograms / histograms.amax(1, keepdim=True).clamp_min(1e-12) * height).round()
    rows = torch.arange(height, 0, -1, device=histograms.device).view(1, height, 1)  # the top row needs `height`
    return (rows <= level.unsqueeze(1)).float().unsqueeze(1)
