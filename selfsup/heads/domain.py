"""A domain discriminator on a backbone's feature map, for feature-space adversarial domain adaptation (Ren & Lee,
"Cross-Domain Self-supervised Multi-task Feature Learning using Synthetic Imagery", CVPR 2018, section 3.3: a small
convolutional network on conv5 that tells real from synthetic features; Ganin & Lempitsky, ICML 2015)."""

from __future__ import annotations

import torch
from torch import nn


class FeatureDiscriminator(nn.Module):
    """One logit per feature map ``(B, C, h, w)`` (positive: real): a conv3x3 of ``hidden`` channels, a second one at
    stride 2, each followed by LeakyReLU(0.2), global average pooling, then a linear layer. No batch norm, so that
    the logit of a map does not depend on the rest of the batch."""

    def __init__(self, in_channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                                  nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out = nn.Linear(hidden, 1)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(fmap)).squeeze(1)
