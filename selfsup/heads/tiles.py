"""Heads over the features of several tiles or patches of one image (jigsaw, context prediction, counting)."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.heads.mlp import MLP


class ConcatHead(nn.Module):
    """The features of an image's ``tiles`` tiles, each through a shared ``tile_dim``-wide layer (the jigsaw
    paper's fc6; none with ``tile_dim=0``), concatenated in their order, then an MLP (its fc7-fc8; VISSL's
    ``siamese_concat_view``): ``(B * tiles, dim)`` rows, tile by tile within each image, -> ``(B, out_dim)``."""

    def __init__(self, tiles: int, dim: int, hidden_dim: int, out_dim: int, tile_dim: int = 0) -> None:
        super().__init__()
        self.tiles = tiles
        self.per_tile = nn.Sequential(nn.Linear(dim, tile_dim, bias=False), nn.BatchNorm1d(tile_dim),
                                      nn.ReLU(inplace=True)) if tile_dim else nn.Identity()
        width = tiles * (tile_dim or dim)
        self.mlp = MLP(width, hidden_dim, out_dim) if hidden_dim else nn.Linear(width, out_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.per_tile(feats)
        return self.mlp(x.reshape(-1, self.tiles * x.shape[1]))
