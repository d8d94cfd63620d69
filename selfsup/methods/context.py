"""Context prediction: where a patch's neighbour lies around it, one of 8 positions (Doersch, Gupta, Efros,
"Unsupervised Visual Representation Learning by Context Prediction", ICCV 2015)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.backbones.inputs import InputEncoder
from selfsup.data.ops.base import IMAGENET_STD, constant
from selfsup.data.ops.patches import (
    POSITIONS,
    dropped_patches,
    neighbour_position,
    pair_geometry,
    project_chroma,
    sample_kept_channel,
    sample_noise,
    sample_patch_pairs,
    standardise_patches,
)
from selfsup.data.views import augmented_tiles, device_layout, for_this_rank
from selfsup.errors import UserError
from selfsup.heads.tiles import ConcatHead
from selfsup.methods.base import Batch, Method
from selfsup.methods.panels import Panel, mosaic, stretch

CHROMA = ("drop", "project", "none")


class PatchInput(nn.Module):
    """ImageNet-normalised RGB -> what context prediction's trunk was trained on: each image (projected towards
    grey with ``project``) centred per channel and scaled to unit root mean square, as its patches were.

    ``dropped`` (colour dropping): a patch's one kept channel carries the whole root mean square, sqrt(3) times
    what each channel of a standardised image gets; the image is divided by sqrt(3) so that each channel is a
    third of such a kept channel, and the first (linear) layer gives the mean of its answers to each channel kept
    alone, not sqrt(3) times it: the evaluated input stays within what the trunk was trained on.
    """

    channels = 3

    def __init__(self, project: bool = False, dropped: bool = False) -> None:
        super().__init__()
        self.project, self.scale = project, 1 / math.sqrt(3) if dropped else 1.0

    def forward(self, x: Tensor) -> Tensor:
        # undoing the normalisation's scale suffices: the per-channel means cancel in the centring (and the
        # projection is linear, so it maps them to per-channel constants that cancel too)
        x = x * constant(IMAGENET_STD, x.dtype, x.device).view(-1, 1, 1)
        return standardise_patches(project_chroma(x) if self.project else x) * self.scale


class ContextPrediction(Method):
    """Every image (after a random resized crop and a flip) gives one pair of square patches: a centre patch and
    one of its 8 neighbours (label uniform over :data:`~selfsup.data.ops.patches.POSITIONS`), a gap of
    ``gap_frac`` of the patch side between them and each patch jittered by up to ``jitter_frac`` of it (the
    paper's 96 px patches, 48 px gap and 7 px jitter), so that low-level cues such as continuing lines and
    textures do not solve the task; ``patch_frac`` of the image side, or by default the largest patch whose pair
    fits (12 px at 32 px, 36 px at 96 px; :func:`~selfsup.data.ops.patches.pair_geometry`). Against chromatic
    aberration (``chroma``): every patch keeps one random colour channel and the other two become Gaussian noise
    of ``drop_noise`` times its standard deviation (``drop``, the paper's colour dropping), or the green-magenta
    axis is projected out (``project``), or nothing (``none``). Each patch is then centred per channel and
    scaled to unit root mean square (the authors' release normalises every patch). The backbone runs once over
    all 2 B patches (at their own size, or ``patch_size``), each patch's features go through a shared
    ``tile_dim`` layer (the paper's fc6), and an MLP on the pair's concatenation (fc7-fc9) classifies the
    neighbour's position. The evaluated encoder is the backbone on whole images prepared as the patches were.
    """

    name = "context"
    paper = ("Doersch, Gupta, Efros, Unsupervised Visual Representation Learning by Context Prediction, "
             "ICCV 2015")
    augment_defaults = {"crop_scale": (0.6, 1.0), "jitter_p": 0.0, "gray_p": 0.0}

    def __init__(self, *args, patch_frac: float | None = None, gap_frac: float = 0.5, jitter_frac: float = 7 / 96,
                 chroma: str = "drop", drop_noise: float = 0.01, patch_size: int | None = None, tile_dim: int = 512,
                 head_hidden_dim: int = 1024, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if chroma not in CHROMA:
            raise UserError(f"context: chroma must be one of {', '.join(CHROMA)}, got '{chroma}'")
        if drop_noise < 0 or (patch_size is not None and patch_size < 1):
            raise UserError(f"context: drop_noise must be >= 0 and patch_size >= 1, got {drop_noise}, {patch_size}")
        self.patch, self.gap, self.jitter = pair_geometry(self.image_size, patch_frac, gap_frac, jitter_frac)
        self.chroma, self.drop_noise, self.patch_size = chroma, drop_noise, patch_size or self.patch
        self.head = ConcatHead(2, self.feat_dim, head_hidden_dim, len(POSITIONS), tile_dim)

    def encoder(self) -> nn.Module:
        """The trunk on whole images centred and scaled as its patches were (projected, if they were)."""
        return InputEncoder(PatchInput(self.chroma == "project", self.chroma == "drop"), self.backbone)

    def patch_pairs(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The network's input for a uint8 batch: the patches ``(B, 2, 3, s, s)`` (centre, neighbour) and the
        neighbour's label ``(B,)``. Draws, in order: the augmentation, the pairs, then (colour dropping) the
        kept channels and the noise, each for the global batch (:func:`~selfsup.data.views.for_this_rank`). With
        crops, flips and grayscale only and patches at their own size (the defaults), the patches are sampled
        straight from the images (:func:`~selfsup.data.augment.augment_tiles`: the same draws and pixels as making
        the views first, at a fraction of the cost; under colour dropping only each patch's kept channel), then
        finished."""
        b, device, size = len(images), images.device, self.image_size
        with torch.autocast(device.type, enabled=False):  # exact float32 sampling, also inside a bf16 step
            cut = augmented_tiles(images, self.aug, size, generator, self.patch, self.patch_size)
            boxes = for_this_rank(lambda n: sample_patch_pairs(n, size, size, self.patch, self.gap, self.jitter,
                                                               generator, device), b)
            keep = noise = None
            if self.chroma == "drop":
                keep = for_this_rank(lambda n: sample_kept_channel(n, 2, 3, generator, device), b)
                if self.drop_noise:  # the 2 dropped channels of each patch
                    shape = (2, 2, self.patch_size, self.patch_size)
                    noise = for_this_rank(lambda n: sample_noise((n, *shape), generator, device), b)

            def finish(patches: Tensor, rows: slice) -> Tensor:
                if keep is not None:  # patches: the kept channel alone
                    return dropped_patches(patches, keep[rows], None if noise is None else noise[rows],
                                           self.drop_noise)
                return standardise_patches(project_chroma(patches) if self.chroma == "project" else patches)

            return cut(boxes, finish, channels=keep), neighbour_position(boxes)

    def training_step(self, batch: Batch) -> Tensor:
        patches, position = self.patch_pairs(batch.images, batch.generator)
        feats = self.backbone(device_layout(patches.flatten(0, 1)))
        return F.cross_entropy(self.head(feats).float(), position)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        patches, position = self.patch_pairs(batch.images, batch.generator)
        shown = stretch(patches.flatten(0, 1)).view_as(patches)
        # the 3 x 3 grid around the centre: cell 4 the centre, the label's cell (skipping 4) the neighbour
        grid = shown.new_ones(len(shown), 9, *shown.shape[2:])
        grid[:, 4] = shown[:, 0]
        grid[torch.arange(len(shown)), position + (position >= 4).long()] = shown[:, 1]
        names = [POSITIONS[i] for i in position.tolist()]
        return [Panel("centre | neighbour, as the network sees them", mosaic(shown, 2), names),
                Panel("the neighbour in its place around the centre", mosaic(grid, 3), names)]
