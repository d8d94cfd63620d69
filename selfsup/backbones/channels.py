"""A trunk copied for inputs of another channel count: the second sub-network of a split-brain autoencoder, the
same architecture on the ab channels as the first on L (Zhang, Isola, Efros, "Split-Brain Autoencoders: Unsupervised
Learning by Cross-Channel Prediction", CVPR 2017)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from selfsup.backbones.timm_backbone import TimmBackbone
from selfsup.errors import UserError


def _fresh(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    """A convolution like ``conv`` that takes ``channels`` channels, with PyTorch's default initialisation."""
    try:
        return nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                         conv.groups, conv.bias is not None, conv.padding_mode, device=conv.weight.device,
                         dtype=conv.weight.dtype)
    except ValueError as e:  # channels not divisible by the groups
        raise UserError(f"cannot give the input convolution {channels} channels: {e}") from None


def with_in_channels(backbone: nn.Module, channels: int, image_size: int | None = None) -> nn.Module:
    """A deep copy of ``backbone`` whose input convolutions take ``channels`` channels; they start afresh
    (PyTorch's default initialisation, as :class:`~selfsup.backbones.resnet.ResNet`'s ``conv1`` for other than 3
    channels), every other weight and buffer is copied, and ``backbone`` is left as it was.

    The input convolutions are the first ``nn.Conv2d`` in module order and every other one that takes as many
    channels: the stem, and where the images are read twice, the second reader too (SNGAN's first block: its
    convolution and its shortcut). Works for every backbone built here and any module whose first convolution
    reads the images. A module without a ``nn.Conv2d``, and a copy that no longer runs on ``channels``-channel
    images of ``image_size`` px (default: the backbone's ``image_size`` where set; then the check is skipped
    without one), are refused with a UserError. Parametrisations of a replaced convolution (spectral norm) are
    not carried over.
    """
    if channels < 1:
        raise UserError(f"in_channels must be at least 1 (got {channels})")
    convs = [(name, m) for name, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError(f"the {type(backbone).__name__} backbone has no Conv2d whose input channels could change")
    old = convs[0][1].in_channels
    clone = copy.deepcopy(backbone)
    for name, conv in convs:
        if conv.in_channels == old:
            parent, _, leaf = name.rpartition(".")
            setattr(clone.get_submodule(parent), leaf, _fresh(conv, channels))
    if hasattr(clone, "in_channels"):
        clone.in_channels = channels
    if isinstance(clone, TimmBackbone):
        clone.create_kwargs["in_chans"] = channels
    size = image_size or getattr(backbone, "image_size", None)
    if size:
        _check_runs(clone, channels, size)
    return clone


@torch.no_grad()
def _check_runs(module: nn.Module, channels: int, size: int) -> None:
    """One forward pass of two zero images in eval mode; a failure becomes a UserError."""
    was_training = module.training
    param = next(module.parameters(), None)
    module.eval()
    try:
        module(torch.zeros(2, channels, size, size, device=None if param is None else param.device))
    except RuntimeError as e:
        raise UserError(f"the {type(module).__name__} backbone does not run on {channels}-channel images once its "
                        f"input convolutions are changed ({str(e).splitlines()[0][:100]})") from None
    finally:
        module.train(was_training)
