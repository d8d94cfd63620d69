"""Heads that generate image content from a trunk's features: the missing tile of a damaged jigsaw puzzle (Kim,
Cho, Yoo, Kweon, "Learning Image Representations by Completing Damaged Jigsaw Puzzles", WACV 2018)."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.heads.decoder import ConvDecoder
from selfsup.heads.tiles import ConcatHead

SEED_SIDE = 4  # the generator's first map is SEED_SIDE x SEED_SIDE


class TileGenerator(nn.Module):
    """The pixels of one tile from the features of a puzzle's ``tiles`` tiles: their concatenation
    (:class:`~selfsup.heads.tiles.ConcatHead`, a shared ``tile_dim`` layer per tile then an MLP) mapped to a
    ``width`` x 4 x 4 map, then conv-BN-ReLU blocks resized to ``size`` x ``size`` and a 1x1 convolution to
    ``channels`` (:class:`~selfsup.heads.decoder.ConvDecoder`): ``(B * tiles, dim)`` -> ``(B, channels, size,
    size)``, unbounded values."""

    def __init__(self, tiles: int, dim: int, hidden_dim: int, size: int, channels: int = 3, tile_dim: int = 0,
                 width: int = 64) -> None:
        super().__init__()
        self.size, self.width = size, width
        self.code = ConcatHead(tiles, dim, hidden_dim, width * SEED_SIDE * SEED_SIDE, tile_dim)
        self.decoder = ConvDecoder(width, channels, width)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        seed = torch.relu(self.code(feats)).view(-1, self.width, SEED_SIDE, SEED_SIDE)
        return self.decoder(seed, self.size)
