"""The quantised lightness of grayscale prediction as classification (Zhang, Isola, Efros, "Split-Brain
Autoencoders: Unsupervised Learning by Cross-Channel Prediction", CVPR 2017, section 4.1: "The L channel, which
has values between 0 and 100, is quantized into 50 bins of size 2"): ``Q`` equal bins over [0, 100], their centres
for decoding (:func:`selfsup.data.ops.ab.annealed_mean` takes them as it takes the ab bins)."""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.data.ops.base import Device, move
from selfsup.errors import UserError

L_MAX = 100.0  # the lightness of white; black is 0


def lightness_centres(q: int, device: Device = None) -> Tensor:
    """The centres ``(q, 1)`` float32 of ``q`` equal bins of L over [0, 100]: ``(i + 1/2) 100 / q``."""
    if q < 2:
        raise UserError(f"the lightness needs at least 2 bins, got {q}")
    return move(((torch.arange(q, dtype=torch.float64) + 0.5) * (L_MAX / q)).float().unsqueeze(1), device)


def quantise_lightness(L: Tensor, q: int) -> Tensor:
    """The bin ``(B, H, W)`` int64 of every pixel of lightness maps ``(B, 1, H, W)`` among ``q`` equal bins over
    [0, 100]: ``floor(L q / 100)``, so bin ``i`` holds ``[100 i / q, 100 (i + 1) / q)``; L = 100 (white) and values
    a conversion rounds past the ends fall into the last and first bins."""
    return torch.floor(L[:, 0].float() * (q / L_MAX)).long().clamp_(0, q - 1)
