"""Decoders on a backbone's feature map: dense predictions at a target resolution (colourisation's per-pixel
bin classifier; the reconstruction methods' images)."""

from __future__ import annotations

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
