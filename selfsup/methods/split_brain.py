"""Split-brain autoencoder: two disjoint trunks, each predicting the Lab channels the other sees (Zhang, Isola, Efros,
"Split-Brain Autoencoders: Unsupervised Learning by Cross-Channel Prediction", CVPR 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones import feature_map, stage_channels
from selfsup.backbones.channels import with_in_channels
from selfsup.backbones.inputs import LabEncoder, scale_lab
from selfsup.data.ops.ab import ab_bins, annealed_mean, nearest_bins
from selfsup.data.ops.base import resize
from selfsup.data.ops.lab import lab_to_rgb, rgb_to_lab
from selfsup.data.ops.lightness import lightness_centres, quantise_lightness
from selfsup.data.views import augmented, device_layout
from selfsup.errors import UserError
from selfsup.heads.decoder import ConvDecoder
from selfsup.losses.cross_channel import split_brain_loss
from selfsup.methods.base import Batch, Method
from selfsup.methods.panels import Panel


class SplitBrain(Method):
    """Two trunks of the configured architecture: the backbone sees the lightness L (scaled to [-1, 1]) and predicts
    the colour; a copy with its own weights (:func:`~selfsup.backbones.channels.with_in_channels`, its input
    convolution re-initialised for 2 channels) sees ab (divided by 110) and predicts L. A decoder on each trunk's
    last map classifies every pixel at 1/``target_stride`` of the input size (the area-averaged Lab there): into the
    in-gamut ab bins of a ``grid``-spaced lattice (262 at grid 10; the paper's set has 313, see
    :func:`~selfsup.data.ops.ab.ab_bins`; ``gamut: false``: the full lattice), and into ``lightness_bins`` equal bins
    of L over [0, 100] (the paper: 50 bins of size 2). Targets are 1-hot and unweighted (the paper's appendix B: no
    soft encoding, no class rebalancing); the loss is the sum of both cross-entropies, logged as ``colour`` and
    ``lightness``. The paper halves every layer of one AlexNet (groups of 2), so the pair has one AlexNet's size;
    here each trunk is the configured backbone, and the recipes set ``width: 0.5`` for the same total. The evaluated
    encoder concatenates both trunks' features and every stage's maps (:class:`LabEncoder`). Crops and flips
    only: colour augmentation would falsify the targets. ``outputs.png``: both inputs and the annealed means of both
    predictions (T = ``temperature``, 0.38 as colourisation).
    """

    name = "split-brain"
    paper = ("Zhang, Isola, Efros, Split-Brain Autoencoders: Unsupervised Learning by Cross-Channel Prediction, "
             "CVPR 2017")
    in_channels = 1
    augment_defaults = {"crop_scale": (0.5, 1.0), "jitter_p": 0.0, "gray_p": 0.0}

    def __init__(self, *args, grid: float = 10.0, gamut: bool = True, lightness_bins: int = 50,
                 target_stride: int = 4, decoder_dim: int = 256, temperature: float = 0.38, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if target_stride < 1 or decoder_dim < 1 or temperature <= 0:
            raise UserError(f"split-brain: target_stride and decoder_dim must be at least 1 and temperature positive "
                            f"(got {target_stride}, {decoder_dim}, {temperature})")
        self.temperature = temperature
        self.target_size = max(1, self.image_size // target_stride)
        self.register_buffer("bins", ab_bins(grid, gamut))
        self.register_buffer("levels", lightness_centres(lightness_bins))
        self.colour_trunk = with_in_channels(self.backbone, 2)  # sees ab
        channels = stage_channels(self.backbone)[-1]
        self.to_ab = ConvDecoder(channels, len(self.bins), decoder_dim)
        self.to_lightness = ConvDecoder(channels, lightness_bins, decoder_dim)

    def _split(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The Lab images, their Lab at the target size (area-averaged) and there every pixel's ab bin and L bin:
        what the training step, ``views`` and ``outputs`` build their inputs and targets from."""
        lab = rgb_to_lab(rgb)
        small = F.interpolate(lab, size=self.target_size, mode="area")
        return lab, small, nearest_bins(small[:, 1:], self.bins)[1][:, 0], quantise_lightness(small, len(self.levels))

    def _predict(self, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ab-bin logits from L and the L-bin logits from ab, at the target size."""
        lightness, colour = scale_lab(lab)
        return (self.to_ab(feature_map(self.backbone, device_layout(lightness)), self.target_size),
                self.to_lightness(feature_map(self.colour_trunk, device_layout(colour)), self.target_size))

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        lab, _, ab_target, lightness_target = self._split(augmented(batch.images, self.aug, self.image_size,
                                                                    batch.generator))
        ab_logits, lightness_logits = self._predict(lab)
        return split_brain_loss(ab_logits, ab_target, lightness_logits, lightness_target)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        lab, small, ab_target, lightness_target = self._split(augmented(batch.images, self.aug, self.image_size,
                                                                        batch.generator))
        ab = self.bins[ab_target].permute(0, 3, 1, 2)
        size = f"{self.target_size} px"
        return [Panel("trunk 1 sees the lightness L", grey(lab[:, :1])),
                Panel(f"it must predict the ab bin of every pixel at {size} (shown with L)",
                      lab_to_rgb(torch.cat([small[:, :1], ab], 1))),
                Panel("trunk 2 sees the colour ab (shown at L = 50)", at_mid_grey(lab[:, 1:])),
                Panel(f"it must predict the L bin of every pixel at {size} (its centre)",
                      grey(self.levels[lightness_target].permute(0, 3, 1, 2)))]

    def encoder(self) -> nn.Module:
        return LabEncoder(self.backbone, self.colour_trunk)

    @torch.no_grad()
    def outputs(self, images: torch.Tensor, generator: torch.Generator) -> list[Panel]:
        """Rows of ``outputs.png``: each trunk's input and the annealed mean of what its decoder predicts."""
        lab, *_ = self._split(resize(images, self.image_size))
        ab_logits, lightness_logits = self._predict(lab)
        ab, lightness = (F.interpolate(annealed_mean(logits.float(), bins, self.temperature), size=self.image_size,
                                       mode="bilinear", align_corners=False)
                         for logits, bins in ((ab_logits, self.bins), (lightness_logits, self.levels)))
        L, t = lab[:, :1], f"annealed mean, T={self.temperature}"
        return [Panel("trunk 1's input: L", grey(L)),
                Panel(f"its colourisation ({t})", lab_to_rgb(torch.cat([L, ab], 1))),
                Panel("trunk 2's input: ab (shown at L = 50)", at_mid_grey(lab[:, 1:])),
                Panel(f"its lightness ({t})", grey(lightness))]


def at_mid_grey(ab: torch.Tensor) -> torch.Tensor:
    """ab maps as sRGB at the constant lightness L = 50."""
    return lab_to_rgb(torch.cat([torch.full_like(ab[:, :1], 50.0), ab], 1))


def grey(L: torch.Tensor) -> torch.Tensor:
    """Lightness maps in [0, 100] as grey values in [0, 1] (the network's scaled L, shifted)."""
    return (L / 100.0).clamp(0.0, 1.0)
