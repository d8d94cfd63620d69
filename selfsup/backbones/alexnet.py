"""An AlexNet-style trunk (Krizhevsky, Sutskever, Hinton, NeurIPS 2012) with BatchNorm, as the self-supervised
papers use it for their per-layer tables (e.g. RotNet, Gidaris et al., ICLR 2018), sized for small images.

Five conv-BN-ReLU layers ``conv1..conv5`` of 64-192-384-256-256 channels (times ``width``); 3x3/2 max-pools after
conv1, conv2 and conv5 as in AlexNet, padded by 1 so each halves the size exactly (ceil); then global average pool
to ``out_dim`` = 256 x ``width`` (the pooled conv5 map replaces fc6/fc7). The stage maps are the convolutions'
outputs before their max-pool, the layers RotNet's per-layer linear probes read.

conv1 depends on the image size, as the ResNet stem does (``stem``, default by size):

- ``cifar`` (below 64 px): 3x3 stride 1, so 32 px gives conv1 32x32, conv2 16x16, conv3-5 8x8;
- ``stl`` (64 to 127 px): 5x5 stride 2, so 96 px (STL-10) gives 48, 24, 12 (64 px: 32, 16, 8);
- ``imagenet`` (128 px and up): AlexNet's 11x11 stride 4 (padding 5 instead of 2: sizes divide exactly).
"""

from __future__ import annotations

from torch import Tensor, nn

from selfsup.backbones.base import Backbone, StageInfo, conv_bn_relu, scaled
from selfsup.errors import UserError

#: stem name -> conv1 (kernel, stride, padding)
STEMS: dict[str, tuple[int, int, int]] = {"cifar": (3, 1, 1), "stl": (5, 2, 2), "imagenet": (11, 4, 5)}
CHANNELS = (64, 192, 384, 256, 256)


def default_stem(image_size: int) -> str:
    """``cifar`` below 64 px, ``stl`` below 128 px, else ``imagenet``."""
    return "cifar" if image_size < 64 else "stl" if image_size < 128 else "imagenet"


class AlexNet(Backbone):
    """AlexNet conv1-conv5 with BN, small-image stems; stages at strides s, 2s, 4s, 4s, 4s (s = conv1's stride)."""

    def __init__(self, in_channels: int = 3, width: float = 1.0, stem: str = "cifar") -> None:
        super().__init__()
        if stem not in STEMS:
            raise UserError(f"unknown AlexNet stem '{stem}'; choose one of: {', '.join(STEMS)}")
        kernel, stride, padding = STEMS[stem]
        c = [scaled(n, width) for n in CHANNELS]
        self.pool = nn.MaxPool2d(3, 2, padding=1)
        self.stages = nn.ModuleList([
            conv_bn_relu(in_channels, c[0], kernel, stride, padding),
            nn.Sequential(self.pool, conv_bn_relu(c[0], c[1], 5)),
            nn.Sequential(self.pool, conv_bn_relu(c[1], c[2], 3)),
            conv_bn_relu(c[2], c[3], 3),
            conv_bn_relu(c[3], c[4], 3),
        ])
        self.stem, self.in_channels, self.out_dim = stem, in_channels, c[4]
        strides = (stride, 2 * stride, 4 * stride, 4 * stride, 4 * stride)
        self.stage_info = [StageInfo(f"conv{i + 1}", ch, s) for i, (ch, s) in enumerate(zip(c, strides))]

    def forward_head(self, fmap: Tensor) -> Tensor:
        """pool5 (3x3/2 max-pool), then global average pool."""
        return self.pool(fmap).mean(dim=(2, 3))
