"""Encoders we keep after pretraining, with their stage outputs exposed for per-layer probes.

Every backbone maps a float image batch ``(B, 3, H, W)`` to features ``(B, D)``. Backbones built here
also implement ``forward_stages(x) -> list[Tensor]``: the feature map after each stage, which the
per-layer linear probe (``selfsup eval layers``) reads. Any other ``nn.Module`` works as a backbone;
it then exposes only its final output.
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.backbones.resnet import ResNet
from selfsup.backbones.small import SmallConvNet
from selfsup.errors import UserError

BACKBONES: dict[str, str] = {
    "small": "4 conv-BN-ReLU blocks (32-64-128-256), max-pool between, global average pool; 0.39 M params",
    "resnet18": "ResNet-18 (He et al., CVPR 2016); CIFAR stem below 64 px, ImageNet stem otherwise",
    "resnet50": "ResNet-50 (He et al., CVPR 2016); CIFAR stem below 64 px, ImageNet stem otherwise",
}


def build_backbone(name: str, image_size: int = 32, stem: str | None = None) -> nn.Module:
    """Build a backbone by name. ``stem`` is ``"cifar"`` or ``"imagenet"`` for ResNets (default by size)."""
    if name == "small":
        return SmallConvNet()
    if name in ("resnet18", "resnet50"):
        stem = stem or ("cifar" if image_size < 64 else "imagenet")
        return ResNet(name, stem=stem)
    raise UserError(f"unknown backbone '{name}'; choose one of: {', '.join(BACKBONES)}")


def stage_outputs(backbone: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of every stage (feature maps), or just the final features for a foreign module."""
    if hasattr(backbone, "forward_stages"):
        return backbone.forward_stages(x)
    return [backbone(x)]


def stage_names(backbone: nn.Module) -> list[str]:
    """Names matching :func:`stage_outputs`."""
    return list(getattr(backbone, "stage_names", ["output"]))


@torch.no_grad()
def feature_dim(backbone: nn.Module, image_size: int, channels: int = 3) -> int:
    """Infer the output size of ``backbone`` with one dummy forward pass in eval mode."""
    was_training = backbone.training
    backbone.eval()
    try:
        param = next(backbone.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        out = backbone(torch.zeros(2, channels, image_size, image_size, device=device))
    finally:
        backbone.train(was_training)
    if out.dim() != 2:
        raise UserError(f"the backbone must map images to (batch, features); it returned shape {tuple(out.shape)}")
    return int(out.shape[1])
