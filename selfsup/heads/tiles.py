"""Heads over the features of several tiles or patches of one image (jigsaw, context prediction, counting)."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.heads.mlp import MLP


class ConcatHead(nn.Module):
    """The features of an image's ``tiles`` tiles, concatenated in their order, then an MLP (the jigsaw paper's
    fc7-fc8 on the concatenated fc6 outputs; VISSL's ``siamese_concat_view``): ``(B * tiles, dim)`` rows, tile
    by tile within each image, -> ``(B, out_dim)``."""

    def __init__(self, tiles: int, dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.tiles = tiles
        self.mlp = MLP(tiles * dim, hidden_dim, out_dim) if hidden_dim else nn.Linear(tiles * dim, out_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.mlp(feats.reshape(-1, self.tiles * feats.shape[1]))
