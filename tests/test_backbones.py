"""Backbones: output sizes, stage taps, stems, any user module."""

import torch
from torch import nn

from selfsup.backbones import build_backbone, feature_dim, stage_names, stage_outputs


def test_small_convnet_matches_the_protocol():
    net = build_backbone("small")
    assert sum(p.numel() for p in net.parameters()) == 388_896  # 0.39 M parameters
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 256)
    assert [t.shape[1:] for t in stage_outputs(net, x)] == [(32, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4)]


def test_resnet_stems():
    cifar, imagenet = build_backbone("resnet18", 32), build_backbone("resnet18", 224)
    assert cifar.stem == "cifar" and imagenet.stem == "imagenet"
    assert stage_outputs(cifar, torch.randn(1, 3, 32, 32))[-1].shape == (1, 512, 4, 4)
    assert stage_outputs(imagenet, torch.randn(1, 3, 64, 64))[-1].shape == (1, 512, 2, 2)
    assert feature_dim(build_backbone("resnet50", 32), 32) == 2048
    assert stage_names(cifar) == ["stem", "layer1", "layer2", "layer3", "layer4"]


def test_any_module_is_a_backbone_and_its_size_is_inferred():
    net = nn.Sequential(nn.Conv2d(3, 7, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.train()
    assert feature_dim(net, 16) == 7 and net.training
    assert stage_names(net) == ["output"] and stage_outputs(net, torch.randn(1, 3, 8, 8))[0].shape == (1, 7)
