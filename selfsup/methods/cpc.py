"""Contrastive Predictive Coding v2: predict the patch vectors of the rows below from the rows above (Hénaff et al.,
"Data-Efficient Image Recognition with Contrastive Predictive Coding", ICML 2020; CPC v1: van den Oord, Li, Vinyals,
"Representation Learning with Contrastive Predictive Coding", arXiv 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.backbones.norm import layer_norm_trunk
from selfsup.data.ops.base import IMAGENET_MEAN, IMAGENET_STD, normalize
from selfsup.data.ops.color import sample_flags
from selfsup.data.ops.patch_grid import augment_patches, grid_geometry, patch_grid
from selfsup.data.ops.patches import sample_kept_channel
from selfsup.data.views import augmented, device_layout, for_this_rank
from selfsup.errors import UserError
from selfsup.heads.pixelcnn import CausalContext
from selfsup.losses.predictive import cpc_loss
from selfsup.methods.base import Batch, Method
from selfsup.methods.panels import Panel, mosaic, stretch

NORMS = ("layer", "batch")


class CPC(Method):
    """Every image (after a random resized crop and a flip) is cut into a ``grid`` x ``grid`` grid of overlapping
    ``patch`` px patches at ``stride`` (by default half the patch, and the largest patch whose grid spans the image:
    the papers' 64 / 32 px at 256 px, 8 / 4 at 32 px; :func:`~selfsup.data.ops.patch_grid.grid_geometry`). Every
    patch is normalised, flipped with probability ``flip_p`` and, with ``color_drop``, keeps one random colour
    channel (CPC v2's patch-based augmentation). The backbone runs once over all B x G x G patches; their pooled
    features are the grid ``z`` ``(B, C, G, G)``. A context network of ``blocks`` residual blocks of masked
    convolutions (``hidden`` channels inside; :class:`~selfsup.heads.pixelcnn.CausalContext`) gives every position
    a context ``c[i, j]`` that sees only the rows ``<= i``, and for every offset ``k = 1 .. steps`` a linear map
    ``W_k`` predicts ``z[i + k, j]`` from it. InfoNCE (:func:`~selfsup.losses.predictive.cpc_loss`) picks each
    target among the patch vectors of every position of every image of the global batch. With ``norm=layer`` (CPC
    v2) the trunk's batch norms become layer norms, so that batch statistics do not carry information between
    patches. Predictions go top-down only (v2 also predicts bottom-up and sideways). The evaluated encoder is the
    backbone on whole images (the papers' linear evaluation pools the patch vectors of the grid instead): simpler,
    and what every evaluation of this library runs.
    """

    name = "cpc"
    paper = ("Hénaff, Srinivas, De Fauw, Razavi, Doersch, Eslami, van den Oord, Data-Efficient Image Recognition "
             "with Contrastive Predictive Coding, ICML 2020")
    augment_defaults = {"crop_scale": (0.6, 1.0), "jitter_p": 0.0, "gray_p": 0.0}
    optimizer, base_lr, weight_decay = "adam", 1e-3, 0.0

    def __init__(self, *args, grid: int = 7, patch: int | None = None, stride: int | None = None, steps: int = 5,
                 hidden: int = 256, blocks: int = 5, flip_p: float = 0.5, color_drop: bool = True,
                 norm: str = "layer", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if norm not in NORMS:
            raise UserError(f"cpc: norm must be one of {', '.join(NORMS)}, got '{norm}'")
        if not 0.0 <= flip_p <= 1.0 or hidden < 1 or blocks < 0:
            raise UserError(f"cpc: needs flip_p in [0, 1], hidden >= 1, blocks >= 0; got {flip_p}, {hidden}, {blocks}")
        self.patch, self.stride = grid_geometry(self.image_size, grid, patch, stride)
        if not 1 <= steps < grid:
            raise UserError(f"cpc: predicting 1 to {steps} rows ahead needs a grid of more than {steps} rows and "
                            f"steps >= 1, got grid={grid}, steps={steps}")
        self.grid, self.steps, self.flip_p, self.color_drop = grid, steps, flip_p, color_drop
        if norm == "layer":
            self.backbone = layer_norm_trunk(self.backbone)
        self.context = CausalContext(self.feat_dim, hidden, blocks)
        self.predict = nn.Conv2d(self.feat_dim, steps * self.feat_dim, 1, bias=False)  # W_1 .. W_steps, stacked

    def _patches(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The trunk's input for a uint8 batch: every image's patches ``(B, G * G, 3, P, P)``, row-major,
        ImageNet-normalised, flipped and colour-dropped. Draws, in order: the view, the patches' flips, their kept
        channels, each for the global batch (:func:`~selfsup.data.views.for_this_rank`)."""
        b, device, cells = len(images), images.device, self.grid * self.grid
        x = normalize(augmented(images, self.aug, self.image_size, generator), IMAGENET_MEAN, IMAGENET_STD)
        flips = keep = None
        if self.flip_p > 0:
            flips = for_this_rank(lambda n: sample_flags(n * cells, self.flip_p, generator, device).view(n, cells), b)
        if self.color_drop:
            keep = for_this_rank(lambda n: sample_kept_channel(n, cells, 3, generator, device), b)
        return augment_patches(patch_grid(x, self.patch, self.stride, self.grid), flips, keep)

    def training_step(self, batch: Batch) -> Tensor:
        patches = self._patches(batch.images, batch.generator)
        feats = self.backbone(device_layout(patches.flatten(0, 1)))  # (B * G * G, C), row-major per image
        z = feats.reshape(len(patches), self.grid, self.grid, -1).permute(0, 3, 1, 2)
        predictions = self.predict(self.context(z)).unflatten(1, (self.steps, -1))  # (B, steps, C, G, G)
        return cpc_loss(z, predictions)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        patches = self._patches(batch.images, batch.generator)
        shown = stretch(patches.flatten(0, 1)).view_as(patches)
        k = self.steps
        row = self.grid - 1 - k  # the last context row that has a target at offset k
        marked = shown.new_ones(shown.shape).unflatten(1, (self.grid, self.grid))
        rows = shown.unflatten(1, (self.grid, self.grid))
        marked[:, : row + 1], marked[:, row + k] = rows[:, : row + 1], rows[:, row + k]
        caption = f"context rows 0-{row}, predicted row {row + k} (offset {k})"
        return [Panel(f"the {self.grid} x {self.grid} grid of {self.patch} px patches at stride {self.stride}, as the "
                      "trunk sees them (normalised, flipped and colour-dropped per patch)", mosaic(shown, self.grid)),
                Panel(f"what the context of row {row} sees (rows 0-{row}) and the row it predicts {k} below",
                      mosaic(marked.flatten(1, 2), self.grid), [caption] * len(shown))]
