"""The damage of "completing damaged jigsaw puzzles" (Kim, Cho, Yoo, Kweon, "Learning Image Representations by
Completing Damaged Jigsaw Puzzles", WACV 2018): a puzzle's tiles lose their colour (only the Lab lightness is
left, each tile standardised as jigsaw tiles are) and one tile per puzzle, at a random cell, is removed."""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.data.ops.base import Device, move
from selfsup.data.ops.lab import rgb_to_lab
from selfsup.data.ops.tiles import normalize_tiles


def sample_missing_cell(batch: int, cells: int, generator: torch.Generator | None = None,
                        device: Device = None) -> Tensor:
    """Per-sample index ``(B,)`` int64 of the cell whose tile is removed, uniform on ``{0, ..., cells - 1}``."""
    on = generator.device if generator is not None else None
    return move(torch.randint(cells, (batch,), generator=generator, device=on), device)


def remove_tile(tiles: Tensor, missing: Tensor, fill: float = 0.0) -> Tensor:
    """``tiles`` ``(B, T, ...)`` with the tile ``missing[b]`` of every sample ``b`` replaced by ``fill``: a new
    tensor, by one multiply-add with a ``(B, T)`` mask (no indexing loop)."""
    keep = torch.arange(tiles.shape[1], device=tiles.device) != missing.to(tiles.device).unsqueeze(1)
    keep = keep.view(*keep.shape, *([1] * (tiles.dim() - 2))).to(tiles.dtype)
    return tiles * keep + fill * (1.0 - keep)


def damage_tiles(tiles: Tensor, missing: Tensor) -> tuple[Tensor, Tensor]:
    """Damage RGB tiles ``(B, T, 3, h, w)`` in [0, 1]: ``(damaged, ab)``.

    ``damaged`` ``(B, T, 1, h, w)``: each tile's Lab lightness L, standardised on its own
    (:func:`~selfsup.data.ops.tiles.normalize_tiles`), and tile ``missing[b]`` set to 0 (a blank,
    which is what a constant tile standardises to). ``ab`` ``(B, T, 2, h, w)``: the colour that was removed, the
    colourisation target (:mod:`selfsup.data.ops.ab`).
    """
    lab = rgb_to_lab(tiles.flatten(0, 1)).view(*tiles.shape[:2], 3, *tiles.shape[-2:])
    return remove_tile(normalize_tiles(lab[:, :, :1]), missing), lab[:, :, 1:]
