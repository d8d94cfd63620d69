"""Encoders we keep after pretraining, with their stages exposed for per-layer probes.

Every backbone maps a float image batch ``(B, C, H, W)`` to features ``(B, D)``. The backbones built here
subclass :class:`~selfsup.backbones.base.Backbone` (timm's feature contract: ``stage_info``, ``forward_stages``,
``forward_features``, ``forward_head``); the per-layer linear probe (``selfsup eval layers``) reads their stages.
Any other ``nn.Module`` works as a backbone; the helpers below then see only its final output.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import nn

from selfsup.backbones import alexnet
from selfsup.backbones.base import Backbone, StageInfo
from selfsup.backbones.nin import NIN
from selfsup.backbones.resnet import ResNet
from selfsup.backbones.small import SmallConvNet
from selfsup.backbones.sngan import SNGANDiscriminator
from selfsup.backbones.timm_backbone import TimmBackbone
from selfsup.backbones.vit import ViT
from selfsup.errors import UserError

__all__ = ["BACKBONES", "Backbone", "StageInfo", "build_backbone", "dummy_pass", "eval_mode", "feature_dim",
           "feature_map", "stage_channels", "stage_names", "stage_outputs"]

T = TypeVar("T")

BACKBONES: dict[str, str] = {
    "small": "4 conv-BN-ReLU blocks (32-64-128-256), max-pool between, global average pool; 0.39 M params",
    "resnet18": "ResNet-18 (He et al., CVPR 2016); CIFAR stem below 64 px, ImageNet stem otherwise; 11.2 M params",
    "resnet50": "ResNet-50 (He et al., CVPR 2016); CIFAR stem below 64 px, ImageNet stem otherwise; 23.5 M params",
    "alexnet": "AlexNet conv1-5 with BN (Krizhevsky et al., NeurIPS 2012); conv1 3x3/1, 5x5/2 or 11x11/4 by image "
               "size; 2.5 M params",
    "nin": "Network-in-Network, 4 blocks of 3 convs, RotNet's CIFAR trunk (Gidaris et al., ICLR 2018); 1.4 M params",
    "sngan": "SNGAN's 32 px ResNet discriminator trunk (Miyato et al., ICLR 2018), global sum pool; 1.1 M params",
    "vit-tiny": "ViT-Tiny (Dosovitskiy et al., ICLR 2021): width 192, 12 blocks, 3 heads, class token, fixed sin-cos "
                "positions; 4 px patches below 64 px, 8 below 160, else 16; 5.3 M params at 32 px",
    "timm:NAME": "any timm model, random init (pip install timm), e.g. timm:resnet18, timm:vit_tiny_patch16_224",
}

_BY_WIDTH = {"small": SmallConvNet, "nin": NIN, "sngan": SNGANDiscriminator}


def build_backbone(name: str, image_size: int = 32, *, in_channels: int = 3, width: float = 1.0,
                   stem: str | None = None) -> Backbone:
    """Build a backbone by name for ``in_channels``-channel images of ``image_size`` px.

    ``width`` multiplies the channels of small, alexnet, nin and sngan, and the token width of vit-tiny. ``stem``
    picks the first layer of the ResNets (``cifar`` | ``imagenet``) and of alexnet (``cifar`` | ``stl`` |
    ``imagenet``); default by image size.
    """
    if in_channels < 1:
        raise UserError(f"in_channels must be at least 1 (got {in_channels})")
    if not width > 0:
        raise UserError(f"width must be positive (got {width})")
    if name.startswith("timm:"):
        if width != 1:
            raise UserError(f"only width 1 is supported for timm models (got {width})")
        _no_stem(name, stem)
        return TimmBackbone(name.removeprefix("timm:"), image_size, in_channels)
    if name in ("resnet18", "resnet50"):
        if width != 1:
            raise UserError(f"only width 1 is supported for ResNets (got {width})")
        return ResNet(name, stem or ("cifar" if image_size < 64 else "imagenet"), in_channels)
    if name == "alexnet":
        return alexnet.AlexNet(in_channels, width, stem or alexnet.default_stem(image_size))
    if name == "vit-tiny":
        _no_stem(name, stem)
        return ViT(image_size, in_channels, width)
    if name not in _BY_WIDTH:
        close = difflib.get_close_matches(name, BACKBONES, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"unknown backbone '{name}'; {hint}choose one of: {', '.join(BACKBONES)}")
    _no_stem(name, stem)
    return _BY_WIDTH[name](in_channels, width)


def _no_stem(name: str, stem: str | None) -> None:
    if stem is not None:
        raise UserError(f"the {name} backbone has no stem option (resnet18, resnet50 and alexnet have)")


def stage_outputs(backbone: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of every stage (feature maps), or just the final features for a foreign module."""
    if hasattr(backbone, "forward_stages"):
        return backbone.forward_stages(x)
    return [backbone(x)]


def stage_names(backbone: nn.Module) -> list[str]:
    """Names matching :func:`stage_outputs`."""
    return list(getattr(backbone, "stage_names", ["output"]))


def stage_channels(backbone: nn.Module) -> list[int]:
    """Channels of every stage's map, from ``stage_info`` (no forward pass); a foreign module has none."""
    if not isinstance(backbone, Backbone):
        raise UserError(f"the {type(backbone).__name__} backbone does not describe its stages (no stage_info)")
    return [s.channels for s in backbone.stage_info]


def feature_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last spatial feature map ``(B, C, h, w)``; a foreign module needs a ``forward_features`` giving one."""
    if isinstance(backbone, Backbone):
        return backbone.feature_map(x)
    fmap = backbone.forward_features(x) if hasattr(backbone, "forward_features") else None
    if not isinstance(fmap, torch.Tensor) or fmap.dim() != 4:
        raise UserError(f"the {type(backbone).__name__} backbone gives no spatial feature map "
                        f"(it needs forward_features returning (B, C, H, W))")
    return fmap


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block (its batch-norm statistics are left alone), its mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@torch.no_grad()
def dummy_pass(module: nn.Module, channels: int, image_size: int,
               fn: Callable[[nn.Module, torch.Tensor], T] = nn.Module.__call__) -> T:
    """``fn(module, zeros)`` on two zero images ``(2, channels, image_size, image_size)`` on the module's device, in
    eval mode without gradients: how a shape is measured."""
    param = next(module.parameters(), None)
    with eval_mode(module):
        return fn(module, torch.zeros(2, channels, image_size, image_size,
                                      device=None if param is None else param.device))


def feature_dim(backbone: nn.Module, image_size: int, channels: int | None = None) -> int:
    """Infer the output size of ``backbone`` with one dummy forward pass in eval mode.

    ``channels`` defaults to the backbone's ``in_channels`` for the backbones built here, else 3.
    """
    if channels is None:
        channels = backbone.in_channels if isinstance(backbone, Backbone) else 3
    out = dummy_pass(backbone, channels, image_size)
    if out.dim() != 2:
        raise UserError(f"the backbone must map images to (batch, features); it returned shape {tuple(out.shape)}")
    return int(out.shape[1])
