"""Completing damaged jigsaw puzzles: solve a colourless 3 x 3 puzzle with a tile missing, generate the missing
tile and colourise the others (Kim, Cho, Yoo, Kweon, "Learning Image Representations by Completing Damaged
Jigsaw Puzzles", WACV 2018)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones import Backbone, feature_map, stage_channels
from selfsup.backbones.inputs import InputEncoder, Lightness, Standardise
from selfsup.data.ops.ab import ab_bins, near_grayscale, nearest_bins, soft_encode
from selfsup.data.ops.damage import damage_tiles, sample_missing_cell
from selfsup.data.ops.lab import lab_to_rgb, rgb_to_lab
from selfsup.data.ops.tiles import crop_tiles, permute_tiles, sample_grid_tiles, sample_permutation_index
from selfsup.data.permutations import max_hamming_permutations
from selfsup.data.views import augmented, device_layout, for_this_rank
from selfsup.errors import UserError
from selfsup.heads.decoder import ConvDecoder
from selfsup.heads.inpaint import TileGenerator
from selfsup.heads.tiles import ConcatHead
from selfsup.losses.colour import colorization_loss
from selfsup.methods.base import Batch, Method
from selfsup.methods.panels import Panel, mosaic, stretch


@dataclass
class Puzzle:
    """One batch of damaged puzzles, every per-tile tensor in slot order (slot ``i`` shows cell ``p[i]``)."""

    inputs: torch.Tensor  # (B, T, 1, s, s): what the trunk sees (standardised L, the missing tile blank)
    colour: torch.Tensor  # (B, T, 3, s, s): the undamaged RGB tiles
    index: torch.Tensor  # (B,) the permutation class
    missing: torch.Tensor  # (B,) the cell whose tile was removed
    slot: torch.Tensor  # (B,) the slot that shows it
    ab: torch.Tensor  # (B * T, 2, t, t): every tile's ab at the colour target size


class DamagedJigsaw(Method):
    """Every image (random resized crop and flip; no colour augmentation, colour is a target) is cut into
    ``grid`` x ``grid`` tiles as in :class:`~selfsup.methods.jigsaw.Jigsaw` (a random tile of ``tile_frac`` of its
    cell's side per cell) and damaged three ways: the tiles are shuffled by one of ``permutations`` maximal-Hamming
    permutations, lose their colour (the trunk sees each tile's Lab lightness, standardised on its own) and one
    tile, at a cell drawn uniformly per image, is removed (a blank tile). The backbone runs once over all B x T
    tiles; three heads share that pass: the permutation from the concatenated tile features (cross-entropy); the
    missing tile's RGB pixels, generated from the same concatenation (mean squared error on [-1, 1], the
    reconstruction loss of context encoders, Pathak et al., CVPR 2016; no adversarial term); and the colour of the
    other tiles, each tile's last feature map decoded to a distribution over ab bins at 1/``target_stride`` of the
    tile (Zhang et al.'s soft-encoded targets and multinomial cross-entropy, without class rebalancing; the
    missing tile and near-grey tiles add nothing). The three terms are returned by name, each times its weight.

    The evaluated encoder is the trunk on the lightness of its input, standardised per image as the tiles were
    (``in_channels = 1``, as colourisation).
    """

    name = "damaged-jigsaw"
    paper = "Kim, Cho, Yoo, Kweon, Learning Image Representations by Completing Damaged Jigsaw Puzzles, WACV 2018"
    in_channels = 1
    augment_defaults = {"crop_scale": (0.6, 1.0), "jitter_p": 0.0, "gray_p": 0.0}

    def __init__(self, *args, permutations: int = 100, grid: int = 3, tile_frac: float = 64 / 85,
                 permutation_seed: int = 0, tile_dim: int = 512, head_hidden_dim: int = 1024,
                 tile_size: int | None = None, permutation_weight: float = 1.0, missing_weight: float = 1.0,
                 colour_weight: float = 1.0, ab_grid: float = 10.0, neighbours: int = 5, sigma: float = 5.0,
                 target_stride: int = 4, decoder_dim: int = 256, generator_width: int = 64, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if grid < 2 or self.image_size // grid < 1:
            raise UserError(f"damaged-jigsaw: a {grid} x {grid} grid needs grid >= 2 and images of at least {grid} px")
        if min(permutation_weight, missing_weight, colour_weight) < 0 or target_stride < 1:
            raise UserError("damaged-jigsaw: the loss weights must be >= 0 and target_stride >= 1")
        self.grid, self.tile_frac, self.neighbours, self.sigma = grid, tile_frac, neighbours, sigma
        self.term_weights = {"permutation": permutation_weight, "missing_tile": missing_weight, "colour": colour_weight}
        size = self.image_size
        self.side = tile_size or int(sample_grid_tiles(1, size, size, grid, tile_frac, torch.Generator())[0, 0, 2])
        self.target_size = max(1, self.side // target_stride)
        tiles = grid * grid
        self.register_buffer("permutations", max_hamming_permutations(permutations, tiles, permutation_seed))
        self.register_buffer("bins", ab_bins(ab_grid))
        self.head = ConcatHead(tiles, self.feat_dim, head_hidden_dim, permutations, tile_dim)
        self.inpainter = TileGenerator(tiles, self.feat_dim, head_hidden_dim, self.side, 3, tile_dim, generator_width)
        self.decoder = ConvDecoder(stage_channels(self.backbone)[-1], len(self.bins), decoder_dim)

    def _puzzle(self, batch: Batch) -> Puzzle:
        """The damaged puzzles of ``batch`` and their targets; draws the view, the tiles, the permutation and the
        missing cell, in that order, for the global batch."""
        x = augmented(batch.images, self.aug, self.image_size, batch.generator)
        b, device, size, cells = len(x), x.device, self.image_size, self.grid * self.grid
        boxes = for_this_rank(lambda n: sample_grid_tiles(n, size, size, self.grid, self.tile_frac,
                                                          batch.generator, device), b)
        index = for_this_rank(lambda n: sample_permutation_index(n, len(self.permutations), batch.generator,
                                                                 device), b)
        missing = for_this_rank(lambda n: sample_missing_cell(n, cells, batch.generator, device), b)
        order = self.permutations[index]  # (B, T)
        slot = (order == missing.unsqueeze(1)).int().argmax(1)
        colour = permute_tiles(crop_tiles(x, boxes, self.side), self.permutations, index)
        inputs, ab = damage_tiles(colour, slot)  # removing the slot that shows the missing cell
        ab = F.interpolate(ab.flatten(0, 1), size=self.target_size, mode="area")
        return Puzzle(inputs, colour, index, missing, slot, ab)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        p = self._puzzle(batch)
        fmap = feature_map(self.backbone, device_layout(p.inputs.flatten(0, 1)))
        feats = self.backbone.forward_head(fmap) if isinstance(self.backbone, Backbone) else fmap.mean((2, 3))
        tile = p.colour[torch.arange(len(p.slot), device=p.slot.device), p.slot]
        logits = self.decoder(fmap, self.target_size)
        targets = soft_encode(p.ab, self.bins, self.neighbours, self.sigma)
        keep = (torch.arange(self.grid**2, device=p.slot.device) != p.slot.unsqueeze(1)).flatten()
        terms = {"permutation": F.cross_entropy(self.head(feats).float(), p.index),
                 "missing_tile": F.mse_loss(self.inpainter(feats).float(), tile * 2.0 - 1.0),
                 "colour": colorization_loss(logits, targets, self.bins.new_ones(len(self.bins)),
                                             keep & ~near_grayscale(p.ab))}
        return {k: v * self.term_weights[k] for k, v in terms.items()}

    def encoder(self) -> nn.Module:
        """The trunk on the lightness of the image, standardised per image as the tiles were."""
        return InputEncoder(nn.Sequential(Lightness(), Standardise()), self.backbone)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        p = self._puzzle(batch)
        shown = stretch(p.inputs.flatten(0, 1)).view_as(p.inputs)  # the blank tile stays black
        lightness = F.interpolate(rgb_to_lab(p.colour.flatten(0, 1))[:, :1], size=self.target_size, mode="area")
        nearest = self.bins[nearest_bins(p.ab, self.bins)[1][:, 0]].permute(0, 3, 1, 2)
        ab_shown = lab_to_rgb(torch.cat([lightness, nearest], 1)).view(*p.inputs.shape[:2], 3, *nearest.shape[-2:])
        captions = [f"permutation {i}, missing cell {c} (slot {s})"
                    for i, c, s in zip(p.index.tolist(), p.missing.tolist(), p.slot.tolist(), strict=True)]
        return [Panel("what the network sees: shuffled grey tiles (L, each standardised), one removed",
                      mosaic(shown, self.grid), captions),
                Panel("what it must generate: the missing tile, in colour",
                      p.colour[torch.arange(len(p.slot)), p.slot], [f"cell {c}" for c in p.missing.tolist()]),
                Panel(f"what it must colourise: every tile's ab bins at {self.target_size} px (shown with L; none "
                      "for the missing tile)", mosaic(ab_shown, self.grid))]
