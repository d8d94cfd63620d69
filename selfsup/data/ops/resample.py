"""The two image transformations of the counting pretext task (Noroozi, Pirsiavash, Favaro, "Representation
Learning by Learning to Count", ICCV 2017): tiling into 2 x 2 quadrants, and downscaling by 2 with a filter drawn
per image from several, so that the network cannot tell a downscaled image from a tile by its filter's trace; and
the blurry full-size input of super-resolution, downscaled and upscaled back (:func:`low_resolution`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import UserError

#: the downscaling filters ``F.interpolate`` offers (bilinear and bicubic with antialiasing, as torchvision's
#: ``resize``; ``area`` averages the 2 x 2 blocks; ``nearest`` keeps every other pixel)
FILTERS = ("bilinear", "bicubic", "area", "nearest")


def quadrants(images: Tensor) -> Tensor:
    """The 2 x 2 tiles of every image ``(B, C, H, W)`` (H and W even), row-major: ``(B, 4, C, H / 2, W / 2)``,
    by a reshape (no resampling)."""
    b, c, h, w = images.shape
    if h % 2 or w % 2:
        raise UserError(f"2 x 2 tiles need an even image size, got {h} x {w}")
    tiles = images.view(b, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5)
    return tiles.reshape(b, 4, c, h // 2, w // 2)


def check_filters(filters: Sequence[str]) -> tuple[str, ...]:
    """``filters`` as a tuple, or a UserError naming the first unknown one."""
    for name in filters:
        if name not in FILTERS:
            raise UserError(f"unknown downscaling filter '{name}'; choose from {', '.join(FILTERS)}")
    if not filters:
        raise UserError("give at least one downscaling filter")
    return tuple(filters)


def downscale(images: Tensor, size: int, filters: Sequence[str], index: Tensor) -> Tensor:
    """Every image ``(B, C, H, W)`` resized to ``size`` x ``size`` with the filter ``filters[index[b]]``.

    Each filter is ``torchvision.transforms.v2.functional.resize(img, [size, size], mode, antialias=True)`` image
    by image (``area`` is the mean of each source block, which torchvision lacks). Every filter runs once on the
    whole batch (a few filters, no loop over samples) and each sample keeps its own; the filters do not clamp,
    so bicubic may overshoot [0, 1] a little, as torchvision's does on float images.
    """
    out = torch.stack([resample(images, (size, size), mode) for mode in filters])
    rows = torch.arange(images.shape[0], device=images.device)
    return out[index.to(images.device), rows]


def resample(images: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """``images`` resized to ``size`` with the filter ``mode`` of :data:`FILTERS`, antialiased where
    ``F.interpolate`` can (bilinear, bicubic): torchvision's ``resize`` for those (bicubic with PIL's and MATLAB's
    kernel, a = -0.5, which ``antialias=True`` selects also when upscaling), a block mean for ``area``."""
    return F.interpolate(images, size=size, mode=mode, antialias=mode in ("bilinear", "bicubic"))


def low_resolution(images: Tensor, factor: int, mode: str = "bilinear") -> Tensor:
    """The input of super-resolution (Dong, Loy, He, Tang, "Image Super-Resolution Using Deep Convolutional
    Networks", ECCV 2014): every image ``(B, C, H, W)`` in [0, 1] downscaled by ``factor`` (to
    ``max(1, round(H / factor))`` x ``max(1, round(W / factor))`` with the filter ``mode``), upscaled back to
    ``H`` x ``W`` bicubically as SRCNN's input is (MATLAB's ``imresize``, whose cubic kernel torchvision's resize
    shares), and clamped to [0, 1]: a blurry image of the full size."""
    height, width = images.shape[-2:]
    small = resample(images, (max(1, round(height / factor)), max(1, round(width / factor))), mode)
    return resample(small, (height, width), "bicubic").clamp_(0.0, 1.0)
