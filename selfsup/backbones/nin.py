"""The Network-in-Network trunk of RotNet's CIFAR-10 experiments (Gidaris, Singh, Komodakis, "Unsupervised
Representation Learning by Predicting Image Rotations", ICLR 2018), after Lin, Chen, Yan, "Network In Network",
ICLR 2014.

Four blocks of three conv-BN-ReLU layers, one k x k convolution and two 1x1 ("mlpconv"), widths times ``width``:

- ``block1``: 5x5 192, 1x1 160, 1x1 96, then 3x3/2 max-pool (pad 1); stride 2 (32 px: 96 x 16 x 16);
- ``block2``: 5x5 192, 1x1 192, 1x1 192, then 3x3/2 average-pool (pad 1); stride 4 (192 x 8 x 8);
- ``block3``, ``block4``: 3x3 192, 1x1 192, 1x1 192; stride 4 (192 x 8 x 8);

then global average pool to 192 features. This is the paper's 4-block model (``num_stages=4``,
``use_avg_on_conv3=False`` in the authors' configuration); a block's map is its output after its pool, the
``conv1..conv4`` features of the paper's per-layer table (conv2, 192 x 8 x 8, is its best layer on CIFAR-10).
"""

from __future__ import annotations

from torch import nn

from selfsup.backbones.base import Backbone, StageInfo, conv_bn_relu, scaled

#: per block: the three convolutions' widths, the first one's kernel, the pool that ends the block (or None)
BLOCKS = (((192, 160, 96), 5, "max"), ((192, 192, 192), 5, "avg"), ((192, 192, 192), 3, None),
          ((192, 192, 192), 3, None))


def _block(cin: int, widths: tuple[int, ...], kernel: int, pool: str | None) -> nn.Sequential:
    a, b, c = widths
    layers = [conv_bn_relu(cin, a, kernel), conv_bn_relu(a, b, 1), conv_bn_relu(b, c, 1)]
    if pool is not None:
        layers.append(nn.MaxPool2d(3, 2, padding=1) if pool == "max" else nn.AvgPool2d(3, 2, padding=1))
    return nn.Sequential(*layers)


class NIN(Backbone):
    """RotNet's 4-block Network-in-Network; stages ``block1..block4`` at strides 2, 4, 4, 4."""

    def __init__(self, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        stages, info, cin, stride = [], [], in_channels, 1
        for i, (widths, kernel, pool) in enumerate(BLOCKS):
            widths = tuple(scaled(w, width) for w in widths)
            stages.append(_block(cin, widths, kernel, pool))
            stride *= 2 if pool else 1
            info.append(StageInfo(f"block{i + 1}", widths[-1], stride))
            cin = widths[-1]
        self.stages = nn.ModuleList(stages)
        self.stage_info, self.in_channels, self.out_dim = info, in_channels, cin
