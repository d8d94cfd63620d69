"""The reconstruction loss of context encoders (Pathak, Krähenbühl, Donahue, Darrell, Efros, "Context Encoders:
Feature Learning by Inpainting", CVPR 2016, eq. 1): the squared error of the prediction, only where the image was
removed (the paper's mask M-hat), with a heavier weight on the band of context around the hole that the prediction
overlaps (their 10x). Their adversarial term is the GAN loss of :mod:`selfsup.losses.gan`. Float32 even inside a
bf16 autocast region (:mod:`.base`)."""

from __future__ import annotations

import torch

from selfsup.losses.base import full_precision


@full_precision
def masked_squared_error(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mean_b [sum_{c,y,x} w_byx (prediction - target)^2 / (C |{w_b > 0}|)]`` for images ``(B, C, H, W)`` and
    per-pixel weights ``(B, 1, H, W)`` (0 outside the loss region): each sample's weighted mean squared error over
    its own region, then the mean over samples (so a batch split into equal shares gives the mean of their losses).
    No gradient flows into ``target``."""
    w = weights.float()
    sq = (prediction.float() - target.detach().float()).square().sum(1, keepdim=True) * w
    count = (w > 0).flatten(1).sum(1).clamp_min(1) * prediction.shape[1]
    return (sq.flatten(1).sum(1) / count).mean()
