"""Encoders whose trunk sees a transform of the image rather than RGB: colourisation's L channel (Zhang et al.,
ECCV 2016), DeepCluster's Sobel edges (Caron et al., ECCV 2018), two trunks on L and ab: the split-brain
autoencoder's (Zhang et al., CVPR 2017) and contrastive multiview coding's (Tian et al., ECCV 2020). The wrappers
take the standard evaluation input (ImageNet-normalised RGB), so kNN, probes, ``embed``, ``export`` (ONNX) and
``retrieve`` use them as any backbone; the transform has no parameters and lives in the exported graph."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones.base import Backbone
from selfsup.data.ops.ab import AB_RANGE
from selfsup.data.ops.base import IMAGENET_MEAN, IMAGENET_STD
from selfsup.data.ops.lab import rgb_to_lab


def _unit_rgb(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised RGB back to [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x * std + mean).clamp(0.0, 1.0)


def scale_lab(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lab maps ``(B, 3, H, W)`` as networks see them: L centred and scaled to [-1, 1], ab divided by 110 (the ab
    grid's extent, :data:`~selfsup.data.ops.ab.AB_RANGE`; sRGB's ab then lie within about [-1, 1])."""
    return lab[:, :1].sub(50.0).div(50.0), lab[:, 1:].div(AB_RANGE)


def lightness(rgb: torch.Tensor) -> torch.Tensor:
    """The network input of colourisation: Lab lightness of [0, 1] RGB, centred and scaled to [-1, 1]."""
    return scale_lab(rgb_to_lab(rgb))[0]


class Lightness(nn.Module):
    """ImageNet-normalised RGB -> :func:`lightness` (1 channel)."""

    channels = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lightness(_unit_rgb(x))


def sobel(rgb: torch.Tensor) -> torch.Tensor:
    """DeepCluster's fixed input filter: the grey image's horizontal and vertical Sobel gradients (2 channels)."""
    gray = rgb.mean(1, keepdim=True)
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=rgb.dtype, device=rgb.device)
    return F.conv2d(gray, torch.stack([k, k.T]).unsqueeze(1), padding=1)


class Sobel(nn.Module):
    """ImageNet-normalised RGB -> :func:`sobel` of its [0, 1] values (2 channels)."""

    channels = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sobel(_unit_rgb(x))


class Standardise(nn.Module):
    """Each image to zero mean and unit standard deviation per channel, as jigsaw tiles are during training
    (Noroozi & Favaro, ECCV 2016): the trunk then sees inputs with the statistics it was trained on."""

    channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-2:], eps=1e-10)


def _stages(backbone: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every stage's map of a backbone built here, else its output alone."""
    return backbone.forward_stages(x) if isinstance(backbone, Backbone) else [backbone(x)]


class InputEncoder(nn.Module):
    """``backbone(transform(x))``, with the backbone's stages (per-layer probes) and its state dict under
    ``backbone.``; shares the backbone's parameters with the method that trains it."""

    def __init__(self, transform: nn.Module, backbone: nn.Module) -> None:
        super().__init__()
        self.transform, self.backbone = transform, backbone

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(getattr(self.backbone, "stage_names", ("output",)))

    @property
    def image_size(self) -> int | None:
        """The size the backbone was trained at (evaluation's default)."""
        return getattr(self.backbone, "image_size", None)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _stages(self.backbone, self.transform(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.transform(x))


class LabEncoder(nn.Module):
    """Two trunks, one on L and one on ab, as one representation: the split-brain autoencoder's (Zhang, Isola, Efros,
    CVPR 2017, section 3.2: ``F^l = {F_1^l, F_2^l}``) and CMC's on L and ab (Tian, Krishnan, Isola, ECCV 2020, section
    4.1: both views' features concatenated). ImageNet-normalised RGB -> Lab (:func:`scale_lab`), L into
    ``lightness_trunk``, ab into ``colour_trunk`` (the same architecture), and their features, as every stage's maps
    (per-layer probes), concatenated along channels. Shares both trunks' parameters with the method that trains them."""

    def __init__(self, lightness_trunk: nn.Module, colour_trunk: nn.Module) -> None:
        super().__init__()
        self.lightness_trunk, self.colour_trunk = lightness_trunk, colour_trunk

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(getattr(self.lightness_trunk, "stage_names", ("output",)))

    @property
    def image_size(self) -> int | None:
        """The size the trunks were trained at (evaluation's default)."""
        return getattr(self.lightness_trunk, "image_size", None)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        L, ab = scale_lab(rgb_to_lab(_unit_rgb(x)))
        return [torch.cat(pair, 1) for pair in zip(_stages(self.lightness_trunk, L), _stages(self.colour_trunk, ab),
                                                   strict=True)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L, ab = scale_lab(rgb_to_lab(_unit_rgb(x)))
        return torch.cat([self.lightness_trunk(L), self.colour_trunk(ab)], 1)
