"""torchvision ResNets with a CIFAR stem (3x3 conv, no max-pool) or the ImageNet stem.

The wrapped torchvision model keeps its parameter names, so ``export`` can hand its state dict
to ``torchvision.models.resnet18()`` unchanged (the classifier is an ``nn.Identity`` here).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn


class ResNet(nn.Module):
    """ResNet-18/50 trunk (He et al., CVPR 2016) returning globally pooled features."""

    stage_names = ("stem", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, arch: str = "resnet18", stem: str = "cifar") -> None:
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif stem != "imagenet":
            raise ValueError(f"unknown stem '{stem}' (cifar or imagenet)")
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        self.arch, self.stem = arch, stem

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        outs = [x]
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
