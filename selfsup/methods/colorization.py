"""Colourisation as classification: predict the quantised ab colour of every pixel from the L channel (Zhang,
Isola, Efros, "Colorful Image Colorization", ECCV 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones import feature_map, stage_channels
from selfsup.backbones.inputs import InputEncoder, Lightness
from selfsup.data.ops.ab import (
    ab_bins,
    annealed_mean,
    near_grayscale,
    nearest_bins,
    rebalance_weights,
    smooth_prior,
    soft_encode,
)
from selfsup.data.ops.base import resize
from selfsup.data.ops.lab import lab_to_rgb, rgb_to_lab
from selfsup.data.views import augmented, device_layout
from selfsup.heads.decoder import ConvDecoder
from selfsup.losses.colour import colorization_loss
from selfsup.methods.base import Batch, EpochContext, Method
from selfsup.methods.panels import Panel


class Colorization(Method):
    """The backbone sees the lightness L (Lab, scaled to [-1, 1]); a decoder on its last feature map predicts,
    at 1/``target_stride`` of the input size as the paper, a distribution over the ab bins (the in-gamut bins
    of a ``grid``-spaced lattice, 262 at grid 10 for sRGB (the paper's set has 313, a looser gamut); or the
    full lattice with ``gamut: false``). Targets are soft-encoded over the ``neighbours`` nearest bins (sigma
    5); the loss reweights rare colours by ``((1 - rebalance) prior + rebalance / Q)^-1`` with the prior
    measured on the training set before the first step (lambda 0.5); near-grayscale images add nothing. Crops
    and flips only: colour augmentation would falsify the targets. The evaluated encoder is the backbone on the
    L channel of its input; ``outputs.png`` shows test images, their L channel and the annealed-mean
    colourisation (T = ``temperature``, 0.38).
    """

    name = "colorization"
    paper = "Zhang, Isola, Efros, Colorful Image Colorization, ECCV 2016"
    in_channels = 1
    augment_defaults = {"crop_scale": (0.5, 1.0), "jitter_p": 0.0, "gray_p": 0.0}

    def __init__(self, *args, grid: float = 10.0, gamut: bool = True, neighbours: int = 5, sigma: float = 5.0,
                 rebalance: float = 0.5, temperature: float = 0.38, target_stride: int = 4, decoder_dim: int = 256,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.neighbours, self.sigma, self.rebalance, self.temperature = neighbours, sigma, rebalance, temperature
        self.target_size = max(1, self.image_size // target_stride)
        self.register_buffer("bins", ab_bins(grid, gamut))
        self.register_buffer("weights", torch.ones(len(self.bins)))  # the rebalancing, set before the first step
        self.decoder = ConvDecoder(stage_channels(self.backbone)[-1], len(self.bins), decoder_dim)

    def _lab(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network input (L in [-1, 1]) and the ab map at the target size (area-averaged)."""
        lab = rgb_to_lab(rgb)
        return lab[:, :1].sub(50.0).div(50.0), F.interpolate(lab[:, 1:], size=self.target_size, mode="area")

    @torch.no_grad()
    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Before the first step: the training set's ab distribution over the bins (evaluation transform, target
        resolution), smoothed, and the rebalancing weights from it."""
        if ctx.epoch > 0:
            return
        q = len(self.bins)

        def counts(x: torch.Tensor) -> torch.Tensor:
            index = nearest_bins(self._lab(resize(x, self.image_size))[1], self.bins)[1].flatten(1)
            ones = torch.ones(index.shape, device=x.device)
            return torch.zeros(len(x), q, device=x.device).scatter_add_(1, index, ones)

        prior = smooth_prior(ctx.extract(counts).sum(0), self.bins.cpu(), self.sigma)
        self.weights.copy_(rebalance_weights(prior, self.rebalance))

    def training_step(self, batch: Batch) -> torch.Tensor:
        rgb = augmented(batch.images, self.aug, self.image_size, batch.generator)
        lightness, ab = self._lab(rgb)
        logits = self.decoder(feature_map(self.backbone, device_layout(lightness)), self.target_size)
        targets = soft_encode(ab, self.bins, self.neighbours, self.sigma)
        return colorization_loss(logits, targets, self.weights, ~near_grayscale(ab))

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        lightness, ab = self._lab(augmented(batch.images, self.aug, self.image_size, batch.generator))
        L = F.interpolate(lightness * 50.0 + 50.0, size=self.target_size, mode="area")
        nearest = self.bins[nearest_bins(ab, self.bins)[1][:, 0]].permute(0, 3, 1, 2)  # (B, 2, h, w)
        skipped = near_grayscale(ab).tolist()
        return [Panel("what the network sees: the lightness L", (lightness + 1.0) / 2.0),
                Panel(f"what it must predict: the ab bin of every pixel at {self.target_size} px (shown with L)",
                      lab_to_rgb(torch.cat([L, nearest], 1)), ["grey: no loss" if s else "" for s in skipped])]

    def encoder(self) -> nn.Module:
        return InputEncoder(Lightness(), self.backbone)

    @torch.no_grad()
    def outputs(self, images: torch.Tensor, generator: torch.Generator) -> list[Panel]:
        """Rows of ``outputs.png``: the L channel of the test images and their annealed-mean colourisation."""
        lightness, _ = self._lab(resize(images, self.image_size))
        logits = self.decoder(feature_map(self.backbone, device_layout(lightness)), self.target_size)
        ab = F.interpolate(annealed_mean(logits.float(), self.bins, self.temperature), size=self.image_size,
                           mode="bilinear", align_corners=False)
        L = lightness.float() * 50.0 + 50.0
        return [Panel("the network's input: L", lab_to_rgb(torch.cat([L, torch.zeros_like(ab)], 1))),
                Panel(f"its colourisation (annealed mean, T={self.temperature})", lab_to_rgb(torch.cat([L, ab], 1)))]
