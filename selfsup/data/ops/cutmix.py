"""CutMix (Yun, Han, Oh, Chun, Choe, Yoo, "CutMix: Regularization Strategy to Train Strong Classifiers with
Localizable Features", ICCV 2019) as a batched op: a box of every image is replaced by the same box of a partner
image, and targets are mixed by the area each image keeps. BoWNet perturbs the student's input with it (Gidaris
et al., CVPR 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.data.ops.base import Device, move, uniform


def sample_cutmix(batch: int, height: int, width: int, p: float = 1.0, generator: torch.Generator | None = None,
                  device: Device = None) -> Tensor:
    """Per-sample boxes ``(B, 4)`` = (top, left, h, w) in whole pixels, as float; an empty box (h = w = 0) for
    the samples left alone (probability ``1 - p``).

    Yun et al.'s sampling with alpha = 1 (their default): ``lam ~ U(0, 1)``, a box of ``floor(H sqrt(1 - lam))``
    by ``floor(W sqrt(1 - lam))`` pixels centred on a pixel drawn uniformly, clipped to the image (so the area
    actually cut can be smaller; :func:`kept_fraction` gives the area each image keeps). Draws, in order: lam,
    the centre row, the centre column, the apply flag (each ``(B,)``, float64).
    """
    u = uniform((4, batch), 0.0, 1.0, generator, torch.float64)
    lam, rows, cols, on = u
    cut = (1.0 - lam).sqrt()
    cut_h, cut_w = (cut * height).floor(), (cut * width).floor()
    cy, cx = (rows * height).floor(), (cols * width).floor()
    top, bottom = (cy - (cut_h / 2).floor()).clamp(0, height), (cy + (cut_h / 2).floor()).clamp(0, height)
    left, right = (cx - (cut_w / 2).floor()).clamp(0, width), (cx + (cut_w / 2).floor()).clamp(0, width)
    boxes = torch.stack([top, left, bottom - top, right - left], 1) * (on < p).unsqueeze(1)
    return move(boxes.float(), device)


def kept_fraction(boxes: Tensor, height: int, width: int) -> Tensor:
    """The fraction ``(B,)`` of every image that :func:`cutmix` leaves: ``1 - box area / image area``, the weight
    of its own target (Yun et al.'s adjusted lambda)."""
    return 1.0 - boxes[:, 2] * boxes[:, 3] / (height * width)


def partners(batch: int, device: Device = None) -> Tensor:
    """The partner of every sample ``(B,)``: its neighbour in pairs (0, 1), (2, 3), ... (``i XOR 1``; an odd last
    sample is its own partner). Pairs never cross the halves of an even split, so a batch split over processes
    in even shares mixes exactly as the whole batch does in one; the batch order is random, so are the pairs."""
    index = torch.arange(batch, device=device) ^ 1
    return index.clamp(max=batch - 1)


def cutmix(images: Tensor, sources: Tensor, boxes: Tensor) -> Tensor:
    """``images`` ``(B, C, H, W)`` with each box (top, left, h, w) of ``boxes`` ``(B, 4)`` taken from the same place of
    the matching image of ``sources`` (e.g. ``images[partners(B)]``): one masked blend over the batch."""
    height, width = images.shape[-2:]
    top, left, h, w = (v.view(-1, 1) for v in boxes.to(images.device).unbind(1))
    ys = torch.arange(height, device=images.device)
    xs = torch.arange(width, device=images.device)
    inside_y = (ys >= top) & (ys < top + h)  # (B, H)
    inside_x = (xs >= left) & (xs < left + w)  # (B, W)
    mask = (inside_y.unsqueeze(2) & inside_x.unsqueeze(1)).unsqueeze(1)  # (B, 1, H, W)
    return torch.where(mask, sources, images)
