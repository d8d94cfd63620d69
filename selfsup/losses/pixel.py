"""Reconstruction errors of the denoising and super-resolution pretexts: the mean squared error of the denoising
autoencoder (Vincent et al., JMLR 2010, eq. 1 with the squared loss of real-valued inputs), the mean absolute error
of super-resolution (Lim, Son, Kim, Nah, Lee, "Enhanced Deep Residual Networks for Single Image Super-Resolution",
CVPRW 2017), and the feature reconstruction (perceptual) loss of Johnson, Alahi, Fei-Fei ("Perceptual Losses for
Real-Time Style Transfer and Super-Resolution", ECCV 2016), a squared error between feature maps. Float32 even
inside a bf16 autocast region (:mod:`.base`)."""

from __future__ import annotations

import torch

from selfsup.losses.base import full_precision

#: the errors :func:`reconstruction_error` knows
NORMS = ("l1", "l2")


@full_precision
def reconstruction_error(prediction: torch.Tensor, target: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """``mean |prediction - target|`` (``l1``) or ``mean (prediction - target)^2`` (``l2``) over every element
    (sample, channel, pixel), so the scale depends on neither batch nor image size. No gradient flows into
    ``target``."""
    diff = prediction.float() - target.detach().float()
    return diff.abs().mean() if norm == "l1" else diff.square().mean()
