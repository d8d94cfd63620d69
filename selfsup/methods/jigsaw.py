"""Jigsaw puzzles: which of a set of permutations shuffled an image's 3 x 3 tiles (Noroozi & Favaro,
"Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles", ECCV 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones.inputs import InputEncoder, Standardise
from selfsup.data.ops.tiles import (
    normalize_tiles,
    permute_tiles,
    sample_grid_tiles,
    sample_permutation_index,
    tile_side,
)
from selfsup.data.permutations import max_hamming_permutations
from selfsup.data.views import augmented_tiles, device_layout, for_this_rank
from selfsup.errors import UserError
from selfsup.heads.tiles import ConcatHead
from selfsup.methods.base import Batch, Method
from selfsup.methods.panels import Panel, mosaic, stretch


class Jigsaw(Method):
    """Every image (after a random resized crop, a flip and, for 30% of them, grayscale: the paper's guard
    against chromatic shortcuts) is cut into a ``grid`` x ``grid`` grid of cells; in each cell a random tile of
    ``tile_frac`` of its side (64 / 85 as in the paper, so the gaps between tiles are random and edges cannot be
    matched), normalised by its own mean and std per channel. The tiles are shuffled by one of ``permutations``
    permutations, chosen greedily for maximal average Hamming distance (the paper's algorithm 1, from
    ``permutation_seed``; the set is a buffer, saved with the run); the backbone runs once over all B x 9 tiles
    (at their own size, or ``tile_size``), each tile's features go through a shared ``tile_dim`` layer (the
    paper's fc6), and an MLP on their concatenation (fc7, fc8) classifies the permutation. The evaluated encoder
    standardises each image per channel, as the tiles were. The views are never made (with the default
    augmentation and tile size): the tiles are cut straight from the images, already shuffled, in one sampling
    pass (:func:`~selfsup.data.augment.augment_tiles`).
    """

    name = "jigsaw"
    paper = "Noroozi & Favaro, Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles, ECCV 2016"
    augment_defaults = {"crop_scale": (0.6, 1.0), "jitter_p": 0.0, "gray_p": 0.3}

    def __init__(self, *args, permutations: int = 100, grid: int = 3, tile_frac: float = 64 / 85,
                 permutation_seed: int = 0, tile_dim: int = 512, head_hidden_dim: int = 1024,
                 tile_size: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if grid < 2 or self.image_size // grid < 1:
            raise UserError(f"jigsaw: a {grid} x {grid} grid needs grid >= 2 and images of at least {grid} px")
        self.grid, self.tile_frac, self.tile_size = grid, tile_frac, tile_size
        self.side = tile_side(self.image_size, self.image_size, grid, tile_frac)  # of the tiles in the views
        self.register_buffer("permutations", max_hamming_permutations(permutations, grid * grid, permutation_seed))
        self.head = ConcatHead(grid * grid, self.feat_dim, head_hidden_dim, permutations, tile_dim)

    def encoder(self) -> nn.Module:
        """The trunk on images standardised per channel, as its tiles were."""
        return InputEncoder(Standardise(), self.backbone)

    def puzzle(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's input for a uint8 batch: every image's shuffled, standardised tiles ``(B, grid * grid, 3,
        s, s)`` and its permutation index ``(B,)``. Draws, in order: the view, the tiles' offsets in their cells,
        the permutation, each for the global batch (:func:`~selfsup.data.views.for_this_rank`); the tiles are cut
        in their shuffled order (slot ``i`` from the box of cell ``p[i]``)."""
        b, device, size = len(images), images.device, self.image_size
        cut = augmented_tiles(images, self.aug, size, generator, self.side, self.tile_size)
        boxes = for_this_rank(lambda n: sample_grid_tiles(n, size, size, self.grid, self.tile_frac, generator,
                                                          device), b)
        index = for_this_rank(lambda n: sample_permutation_index(n, len(self.permutations), generator, device), b)
        return cut(permute_tiles(boxes, self.permutations, index), lambda tiles, _: normalize_tiles(tiles)), index

    def training_step(self, batch: Batch) -> torch.Tensor:
        tiles, index = self.puzzle(batch.images, batch.generator)
        feats = self.backbone(device_layout(tiles.flatten(0, 1)))
        return F.cross_entropy(self.head(feats).float(), index)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        tiles, index = self.puzzle(batch.images, batch.generator)
        shown = stretch(tiles.flatten(0, 1)).view_as(tiles)  # standardised tiles, each mapped onto [0, 1]
        order = self.permutations[index].argsort(1)  # slot i shows cell p[i]: cell c sits in slot order[c]
        solved = shown.gather(1, order.view(*order.shape, 1, 1, 1).expand_as(shown))
        return [Panel("what the network sees: the shuffled tiles (each standardised)", mosaic(shown, self.grid),
                      [f"permutation {i}" for i in index.tolist()]),
                Panel("the answer: the tiles put back by the permutation", mosaic(solved, self.grid))]
