"""torchvision ResNets with a CIFAR stem (3x3 conv, no max-pool) or the ImageNet stem.

The wrapped torchvision model keeps its parameter names, so ``export`` can hand its state dict
to ``torchvision.models.resnet18()`` unchanged (the classifier is an ``nn.Identity`` here).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from selfsup.backbones.base import Backbone, StageInfo
from selfsup.errors import UserError

STEMS = ("cifar", "imagenet")


class ResNet(Backbone):
    """ResNet-18/50 trunk (He et al., CVPR 2016) returning globally pooled features.

    Stages ``stem, layer1..layer4``: strides 1, 1, 2, 4, 8 with the CIFAR stem, 4, 4, 8, 16, 32 with the ImageNet
    stem (7x7/2 conv + 3x3/2 max-pool). ``in_channels`` other than 3 replaces ``conv1`` (PyTorch's default init).
    """

    def __init__(self, arch: str = "resnet18", stem: str = "cifar", in_channels: int = 3) -> None:
        super().__init__()
        if stem not in STEMS:
            raise UserError(f"unknown ResNet stem '{stem}'; choose one of: {', '.join(STEMS)}")
        net = getattr(torchvision.models, arch)(weights=None)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        self.arch, self.stem, self.in_channels = arch, stem, in_channels
        first = 1 if stem == "cifar" else 4
        expansion = self.out_dim // 512
        self.stage_info = [StageInfo("stem", 64, first)] + [
            StageInfo(f"layer{i + 1}", 64 * 2**i * expansion, first * 2**i) for i in range(4)]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        outs = [x]
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            outs.append(x)
        return outs

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        """torchvision's own pooling (``avgpool``, flatten, the identity ``fc``), so ``forward`` is exactly this."""
        n = self.net
        return n.fc(torch.flatten(n.avgpool(fmap), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
