"""Decoders on a backbone's feature map: dense predictions at a target resolution (colourisation's per-pixel
bin classifier; the reconstruction methods' images)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ConvDecoder(nn.Module):
    """``layers`` conv3x3-BN-ReLU blocks of ``hidden`` channels on the map, bilinear resizing to the target size,
    then a 1x1 convolution to ``out_channels`` (e.g. one logit per colour bin per pixel)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1, bias=False),
                       nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*blocks)
        self.out = nn.Conv2d(hidden if layers else in_channels, out_channels, 1)

    def forward(self, fmap: torch.Tensor, size: int) -> torch.Tensor:
        x = self.body(fmap)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return self.out(x)


class PixelDecoder(nn.Module):
    """Images from a feature map at 1/``scale`` of their size (the reconstruction methods: denoising, inpainting,
    super-resolution): a 1x1 convolution to ``hidden`` channels, then ``ceil(log2(scale))`` blocks of x2 nearest
    upsampling + conv3x3-BN-ReLU (channels halved each time, at least ``min_channels``), bilinear resizing to the
    exact size where needed, and a conv3x3 to ``out_channels`` with no activation (the loss sets the range)."""

    def __init__(self, in_channels: int, out_channels: int, scale: float, hidden: int = 256,
                 min_channels: int = 32) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                                   nn.ReLU(inplace=True)]
        width = hidden
        for _ in range(max(0, math.ceil(math.log2(scale) - 1e-9))):
            narrower = max(min_channels, width // 2)
            blocks += [nn.Upsample(scale_factor=2.0, mode="nearest"),
                       nn.Conv2d(width, narrower, 3, padding=1, bias=False), nn.BatchNorm2d(narrower),
                       nn.ReLU(inplace=True)]
            width = narrower
        self.body = nn.Sequential(*blocks)
        self.out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, fmap: torch.Tensor, size: int) -> torch.Tensor:
        x = self.body(fmap)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return self.out(x)
