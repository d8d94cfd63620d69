"""Counting: the visual primitives of an image are as many as those of its four tiles together (Noroozi,
Pirsiavash, Favaro, "Representation Learning by Learning to Count", ICCV 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from selfsup.data.ops.resample import FILTERS, check_filters, downscale, quadrants
from selfsup.data.ops.tiles import sample_permutation_index
from selfsup.data.views import augmented, for_this_rank, prepare
from selfsup.errors import UserError
from selfsup.heads import MLP
from selfsup.losses.equivariance import counting_loss
from selfsup.methods.base import Batch, Method
from selfsup.methods.panels import Panel, mosaic


def partners(batch: int, device: torch.device | None = None) -> torch.Tensor:
    """The other image ``y`` of every sample: its neighbour in the batch, ``b ^ 1`` (0 <-> 1, 2 <-> 3, ...); the
    last one of an odd batch takes the one before it. Pairs never straddle two processes' shares of an even
    per-process batch, so N processes pair the images as one process does; the data order is shuffled, so the
    pairs are random."""
    if batch < 2:
        raise UserError("counting needs at least 2 images per process (each is contrasted with another one)")
    index = torch.arange(batch, device=device) ^ 1
    return index.clamp_(max=batch - 2) if batch % 2 else index


class Counting(Method):
    """Every image, augmented at twice ``image_size`` (``x``), gives its 2 x 2 tiles ``T_j(x)`` and itself
    downscaled by 2, ``D(x)``, all of ``image_size``: the paper's 228 px crop, 114 px tiles and network input, so
    the backbone trains (and is evaluated) at ``image_size``, where a whole image is ``D(x)``. The downscaling
    filter is drawn per image among ``filters``: the paper draws it among several so that the network cannot tell
    a tile from a downscaled image by the filter's trace; torch has no Lanczos, so the four default filters are
    bilinear, bicubic (both antialiased), area and nearest. The backbone runs once over the B x 4 tiles and the B
    downscaled images; a head (linear, or an MLP with ``head_hidden_dim``) + ReLU maps its features to a
    non-negative ``count_dim``-vector ``phi`` (the paper's 1000 counted primitives). The loss pulls ``phi(D x)``
    onto ``sum_j phi(T_j x)`` and pushes another image's ``phi(D y)`` at least ``sqrt(margin)`` away from that sum
    (``M = 10``), which rules out the all-zero counts; ``y`` is ``x``'s neighbour in the batch (:func:`partners`).
    Light augmentation (crops and flips), since the random filter is the paper's guard against shortcuts.
    """

    name = "counting"
    paper = "Noroozi, Pirsiavash, Favaro, Representation Learning by Learning to Count, ICCV 2017"
    augment_defaults = {"crop_scale": (0.5, 1.0), "jitter_p": 0.0, "gray_p": 0.0}
    #: Adam (1e-4 at batch 64): with SGD the small convnet collapses to all-zero counts (kNN 40-56% on digits,
    #: random init 82%; measured)
    optimizer, base_lr, weight_decay = "adam", 4e-4, 0.0

    def __init__(self, *args, count_dim: int = 1000, margin: float = 10.0, head_hidden_dim: int = 0,
                 filters: str | Sequence[str] = FILTERS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if count_dim < 1 or margin <= 0:
            raise UserError(f"counting: count_dim must be >= 1 and margin > 0, got {count_dim} and {margin}")
        self.filters = check_filters(filters.split(",") if isinstance(filters, str) else filters)
        self.margin = margin
        layer = MLP(self.feat_dim, head_hidden_dim, count_dim) if head_hidden_dim else nn.Linear(self.feat_dim,
                                                                                                  count_dim)
        self.counter = nn.Sequential(layer, nn.ReLU(inplace=True))

    def _inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every image's 4 tiles ``(B, 4, 3, s, s)`` and downscaled self ``(B, 3, s, s)`` (float, [0, 1] up to the
        bicubic filter's overshoot), ``s = image_size``, and the index of the filter that downscaled it."""
        x = augmented(batch.images, self.aug, 2 * self.image_size, batch.generator)
        index = for_this_rank(lambda n: sample_permutation_index(n, len(self.filters), batch.generator, x.device),
                              len(x))
        return quadrants(x), downscale(x, self.image_size, self.filters, index), index

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        tiles, whole, _ = self._inputs(batch)
        b = len(whole)
        counts = self.counter(self.backbone(prepare(torch.cat([tiles.flatten(0, 1), whole])))).float()
        tile_counts, whole_counts = counts[: 4 * b].view(b, 4, -1), counts[4 * b:]
        match, contrast = counting_loss(whole_counts, tile_counts, whole_counts[partners(b, counts.device)],
                                        self.margin)
        return {"match": match, "contrast": contrast}

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        tiles, whole, index = self._inputs(batch)
        other = partners(len(whole), whole.device)
        return [Panel("D(x): the image downscaled by 2", whole.clamp(0, 1),
                      [f"{self.filters[i]} filter" for i in index.tolist()]),
                Panel("T(x): its 2 x 2 tiles (their counts must sum to D(x)'s)", mosaic(tiles, 2)),
                Panel("D(y): another image (its counts must differ)", whole[other].clamp(0, 1),
                      [f"y = image {j}" for j in other.tolist()])]
