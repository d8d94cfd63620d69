"""Patches where the image has structure, seen through a random affine transform: one ``grid_sample`` over the
batch (Exemplar-CNN's seed patches and their translations, scalings and rotations; Dosovitskiy, Springenberg,
Riedmiller, Brox, "Discriminative Unsupervised Feature Learning with Convolutional Neural Networks", NIPS 2014)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.data.ops.base import Device, gray, move, to_float, uniform


def gradient_energy(images: Tensor) -> Tensor:
    """Squared gradient magnitude of every pixel's luma, ``(B, H, W)``: central differences inside the image,
    one-sided ones at its border (``torch.gradient``)."""
    dy, dx = torch.gradient(gray(to_float(images)).squeeze(1), dim=(1, 2))
    return dy.square() + dx.square()


def energy_boxes(images: Tensor, sides: Tensor, u: Tensor) -> Tensor:
    """Square patch boxes ``(B, 4)`` = (top, left, side, side), float, one per image: box ``b`` has side
    ``sides[b]`` (whole pixels, at most the image's shorter side) and its position, among all those where it fits,
    is the one the uniform number ``u[b]`` in [0, 1) picks by inverse transform sampling from probabilities
    proportional to the box's summed :func:`gradient_energy` (the paper's patches: "sampled with probability
    proportional to the mean squared gradient magnitude within the patch"; every box of an image has the same
    area, so sum and mean rank alike). A flat image's positions are equally likely."""
    energy = gradient_energy(images).double()
    b, h, w = energy.shape
    integral = F.pad(energy.cumsum(1).cumsum(2), (1, 0, 1, 0))  # (B, H + 1, W + 1)
    side = sides.to(energy.device).long().view(b, 1, 1)
    top = torch.arange(h, device=energy.device).view(1, h, 1)
    left = torch.arange(w, device=energy.device).view(1, 1, w)
    bottom, right = (top + side).clamp(max=h), (left + side).clamp(max=w)

    def at(rows: Tensor, cols: Tensor) -> Tensor:
        flat = (rows * (w + 1) + cols).expand(b, h, w).reshape(b, -1)
        return integral.view(b, -1).gather(1, flat)

    boxes = at(bottom, right) - at(top, right) - at(bottom, left) + at(top, left)
    fits = ((top <= h - side) & (left <= w - side)).reshape(b, -1)
    # the tiny constant only matters where every box is flat (uniform then); rounding cannot make a sum negative
    weights = torch.where(fits, boxes.clamp(min=0.0) + 1e-12, 0.0)
    cdf = weights.cumsum(1)
    target = u.to(energy.device, torch.float64).view(b, 1) * cdf[:, -1:]
    pos = torch.searchsorted(cdf, target, right=True).clamp(max=h * w - 1).squeeze(1)
    side = side.view(b).to(torch.float32)
    return torch.stack([(pos // w).float(), (pos % w).float(), side, side], 1)


def sample_patch_affine(batch: int, translate: float = 0.2, scale: tuple[float, float] = (0.7, 1.4),
                  degrees: float = 20.0, generator: torch.Generator | None = None, device: Device = None) -> Tensor:
    """Per-sample affine parameters ``(B, 4)`` = (angle in degrees, horizontal and vertical shift as fractions of
    the patch side, scale factor): the angle uniform on [-degrees, degrees], each shift uniform on [-translate,
    translate], the scale log-uniform on ``scale`` (the paper's defaults: 20 degrees, 0.2 of the patch size,
    0.7 to 1.4)."""
    angle = uniform((batch,), -degrees, degrees, generator)
    shift = uniform((batch, 2), -translate, translate, generator)
    factor = uniform((batch,), math.log(scale[0]), math.log(scale[1]), generator).exp()
    return move(torch.cat([angle[:, None], shift, factor[:, None]], 1), device)


def affine_patches(images: Tensor, boxes: Tensor, params: Tensor, size: int, padding: str = "reflection") -> Tensor:
    """Every image's box (top, left, h, w) seen through its affine transform (angle, tx, ty, scale) about the box
    centre, bilinearly resampled to ``size`` x ``size``, float [0, 1], as one ``grid_sample`` over the batch.

    Where the box and the output have the same size this is ``torchvision.transforms.v2.functional.affine(img,
    angle, [tx * w, ty * h], scale, [0, 0], BILINEAR, center=box centre)`` cropped to the box (``padding="zeros"``
    is its fill): the content is turned clockwise by the angle, scaled and then shifted by the
    translation. The output samples the image outside the box where the transform reaches there (context, as a
    crop of a larger picture would); outside the image ``padding`` is ``grid_sample``'s."""
    x = to_float(images)
    batch, _, height, width = x.shape
    top, left, h, w = boxes.to(x.device, torch.float32).unbind(1)
    angle, tx, ty, factor = params.to(x.device, torch.float32).unbind(1)
    steps = torch.arange(size, device=x.device, dtype=torch.float32).add_(0.5 - size / 2)
    # output pixel centres in source pixels, relative to the box centre, minus the translation
    ux = (steps[None, :] * (w / size)[:, None] - (tx * w)[:, None])[:, None, :]  # (B, 1, size)
    uy = (steps[None, :] * (h / size)[:, None] - (ty * h)[:, None])[:, :, None]  # (B, size, 1)
    rad = torch.deg2rad(angle)
    cos, sin = (rad.cos() / factor).view(batch, 1, 1), (rad.sin() / factor).view(batch, 1, 1)
    src_x = cos * ux + sin * uy + (left + w / 2).view(batch, 1, 1)  # edge coordinates: pixel j spans [j, j + 1)
    src_y = cos * uy - sin * ux + (top + h / 2).view(batch, 1, 1)
    grid = torch.stack([src_x * (2.0 / width) - 1.0, src_y * (2.0 / height) - 1.0], 3)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode=padding, align_corners=False)
