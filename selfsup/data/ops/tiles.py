"""Batched tile ops of the jigsaw pretext task (Noroozi & Favaro, "Unsupervised Learning of Visual
Representations by Solving Jigsaw Puzzles", ECCV 2016): a random tile in every cell of a grid, all tiles of
the batch cropped in one ``grid_sample``, normalised one by one, and shuffled by a permutation per sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.data.ops.base import Device, move
from selfsup.data.ops.crop import source_coords
from selfsup.errors import UserError


def tile_side(height: int, width: int, grid: int = 3, tile_frac: float = 64 / 85) -> int:
    """The side of the tiles of :func:`sample_grid_tiles`: ``max(1, round(cell * tile_frac))`` (Python's
    ``round``) with ``cell = min(height, width) // grid``."""
    if grid < 1 or min(height, width) < grid:
        raise UserError(f"a {grid} x {grid} tile grid does not fit a {height} x {width} image")
    if not 0.0 < tile_frac <= 1.0:
        raise UserError(f"the jigsaw tile fraction must be in (0, 1], got {tile_frac}")
    return max(1, round(min(height, width) // grid * tile_frac))


def sample_grid_tiles(batch: int, height: int, width: int, grid: int = 3, tile_frac: float = 64 / 85,
                      generator: torch.Generator | None = None, device: Device = None) -> Tensor:
    """Per-sample tile boxes ``(B, grid * grid, 4)`` = (top, left, h, w) in whole pixels, as float.

    The centred square of ``grid * cell`` pixels, ``cell = min(height, width) // grid``, is split into
    ``grid`` x ``grid`` cells (row-major order); in each cell a square tile of side
    ``max(1, round(cell * tile_frac))`` (:func:`tile_side`) sits at an offset uniform on
    ``{0, ..., cell - side}`` in each direction, drawn independently per cell and sample. The paper's 255 px
    image, 85 px cells and 64 px tiles (``tile_frac = 64 / 85``) leave random gaps between the tiles, so
    that edges cannot be matched.
    """
    side = tile_side(height, width, grid, tile_frac)
    cell = min(height, width) // grid
    room = cell - side + 1  # possible offsets per direction
    on = generator.device if generator is not None else None
    u = torch.rand((batch, grid * grid, 2), generator=generator, device=on, dtype=torch.float64)
    offsets = (u * room).floor_().clamp_(max=room - 1)
    cells = torch.arange(grid * grid, device=u.device)
    corners = torch.stack([cells // grid * cell + (height - grid * cell) // 2,
                           cells % grid * cell + (width - grid * cell) // 2], 1)  # (T, 2), row-major cells
    top_left = offsets + corners
    sides = torch.full_like(top_left, float(side))
    return move(torch.cat([top_left, sides], 2).to(torch.float32), device)


def crop_tiles(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crop every tile box (top, left, h, w) of ``boxes`` ``(B, T, 4)`` from its image of ``images``
    ``(B, C, H, W)`` and resize it bilinearly to ``size`` x ``size``: ``(B, T, C, size, size)``, contiguous.

    The sampling of :func:`selfsup.data.ops.crop.resized_crop` (torchvision ``resized_crop`` with
    ``antialias=False``, tile by tile), with the ``T`` tiles of an image stacked along the height of one
    sampling grid ``(B, T * size, size, 2)``: one ``F.grid_sample`` for the whole batch, with no copy of the
    images per tile.
    """
    batch, channels, height, width = images.shape
    tiles = boxes.shape[1]
    top, left, h, w = boxes.to(images.device, torch.float32).reshape(-1, 4).unbind(1)
    grid_y = source_coords(top, h, size, height).view(batch, tiles * size, 1).expand(-1, -1, size)
    grid_x = source_coords(left, w, size, width).view(batch, tiles, 1, size).expand(-1, -1, size, -1)
    grid = torch.stack([grid_x.reshape(batch, tiles * size, size), grid_y], 3).to(images.dtype)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(batch, channels, tiles, size, size).transpose(1, 2).contiguous()


def select_tile_channels(tiles: Tensor, channels: Tensor | None) -> Tensor:
    """Channel ``channels[b, t]`` of every tile ``tiles[b, t]`` ``(B, T, C, h, w)``: ``(B, T, 1, h, w)``;
    ``tiles`` as they are for ``None``."""
    if channels is None:
        return tiles
    index = channels.to(tiles.device).view(*channels.shape, 1, 1, 1).expand(-1, -1, 1, *tiles.shape[-2:])
    return tiles.gather(2, index)


def normalize_tiles(tiles: Tensor, eps: float = 1e-5) -> Tensor:
    """Every tile ``(..., C, h, w)`` standardised on its own, channel by channel: ``(x - mean) / sqrt(var +
    eps ** 2)`` with the tile's per-channel mean and population variance, so a standard deviation much below
    ``eps`` counts as ``eps`` (a constant channel becomes 0, not NaN, and rounding noise is not amplified).

    Noroozi & Favaro (ECCV 2016) "normalize the mean and the standard deviation of each patch independently"
    so that adjacent tiles cannot be matched by their low-level statistics; the paper does not say whether per
    channel. Per channel follows the authors' first Caffe release, which subtracts each tile's own mean channel
    by channel, and also removes each tile's colour cast (bbrattoli/JigsawPuzzlePytorch pools the channels).
    One ``F.layer_norm`` over the last two dimensions: several times faster on CPU than ``torch.std_mean``.
    """
    return F.layer_norm(tiles, tiles.shape[-2:], eps=eps * eps)


def sample_permutation_index(batch: int, count: int, generator: torch.Generator | None = None,
                             device: Device = None) -> Tensor:
    """Per-sample permutation index ``(B,)`` int64, uniform on ``{0, ..., count - 1}``: the jigsaw class."""
    on = generator.device if generator is not None else None
    return move(torch.randint(count, (batch,), generator=generator, device=on), device)


def permute_tiles(tiles: Tensor, permutations: Tensor, index: Tensor) -> Tensor:
    """Shuffle the tiles ``(B, T, ...)`` of each sample by its permutation: ``out[b, i] = tiles[b, p[i]]``
    with ``p = permutations[index[b]]``, ``permutations`` ``(P, T)`` and ``index`` ``(B,)`` int64.

    Slot ``i`` shows the tile of cell ``p[i]``, as in the authors' code and in bbrattoli/JigsawPuzzlePytorch;
    ``index`` is the class to predict. One ``index_select`` over the flattened ``(B * T, ...)`` tiles.
    """
    batch, count = tiles.shape[:2]
    order = permutations.to(tiles.device)[index.to(tiles.device)]  # (B, T)
    rows = order + torch.arange(batch, device=tiles.device).unsqueeze(1) * count
    return tiles.flatten(0, 1).index_select(0, rows.flatten()).view_as(tiles)
