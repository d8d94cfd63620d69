"""The ResNet discriminator trunk of SNGAN for 32 px images (Miyato, Kataoka, Koyama, Yoshida, "Spectral
Normalization for Generative Adversarial Networks", ICLR 2018, appendix B, table 4b), the CIFAR-10 discriminator
of SSGAN (Chen, Zhai, Ritter, Lucic, Houlsby, "Self-Supervised GANs via Auxiliary Rotation Loss", CVPR 2019).

- ``block1``: the "optimized" block, in -> 128, conv3x3-ReLU-conv3x3-avgpool; stride 2 (32 px: 128 x 16 x 16);
- ``block2``: residual block 128 with 2x2 average-pool downsampling; stride 4 (128 x 8 x 8);
- ``block3``, ``block4``: residual blocks 128 without; stride 4 (128 x 8 x 8); block4's map after a last ReLU;

then global SUM pooling (as the paper) to 128 features; 128 is times ``width``. No normalisation layer: the GAN
method applies ``torch.nn.utils.parametrizations.spectral_norm`` to every convolution itself. The final ReLU
belongs to block4's map (so every trunk here ends its last map in a ReLU), the head only sums.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.backbones.base import Backbone, StageInfo, scaled


class DownBlock(nn.Module):
    """Pre-activation residual block: ReLU-conv3x3-ReLU-conv3x3[-avgpool2], plus a shortcut [avgpool2-]conv1x1
    when the size or the width changes (else the identity).

    The ``first`` (SNGAN's "optimized") block takes the images and skips the leading ReLU. The shortcut pools
    before its 1x1 convolution: the two commute exactly (both linear, the bias a constant) and the convolution
    then costs a quarter. Residual convolutions start Glorot-uniform with gain sqrt(2), the shortcut with gain 1,
    biases at zero (SNGAN reference code).
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool, first: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        learned = downsample or in_channels != out_channels
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if learned else None
        self.downsample, self.first = downsample, first
        for conv, gain in ((self.conv1, math.sqrt(2.0)), (self.conv2, math.sqrt(2.0)), (self.shortcut, 1.0)):
            if conv is not None:
                nn.init.xavier_uniform_(conv.weight, gain)
                nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.relu(self.conv1(x if self.first else F.relu(x))))
        skip = x
        if self.downsample:
            h, skip = F.avg_pool2d(h, 2), F.avg_pool2d(skip, 2)
        if self.shortcut is not None:
            skip = self.shortcut(skip)
        return h + skip


class SNGANDiscriminator(Backbone):
    """SNGAN/SSGAN's 32 px ResNet discriminator without its final linear layer; global sum pooling."""

    def __init__(self, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        c = scaled(128, width)
        self.stages = nn.ModuleList([
            DownBlock(in_channels, c, downsample=True, first=True),
            DownBlock(c, c, downsample=True),
            DownBlock(c, c, downsample=False),
            nn.Sequential(DownBlock(c, c, downsample=False), nn.ReLU()),
        ])
        self.in_channels, self.out_dim = in_channels, c
        self.stage_info = [StageInfo(f"block{i + 1}", c, s) for i, s in enumerate((2, 4, 4, 4))]

    def forward_head(self, fmap: Tensor) -> Tensor:
        """Global sum pooling (SNGAN): the features grow with the map's area."""
        return fmap.sum(dim=(2, 3))
