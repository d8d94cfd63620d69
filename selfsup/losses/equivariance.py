"""Losses of the equivariance pretext tasks: counting (a feature of the whole image equals the sum over its tiles)
and auto-encoding transformations (regress the transform between two views). Pure functions of tensors, computed
in float32 even inside a bf16 autocast region (:mod:`.base`)."""

from __future__ import annotations

import torch

from selfsup.losses.base import full_precision


@full_precision
def counting_loss(whole: torch.Tensor, tiles: torch.Tensor, other: torch.Tensor,
                  margin: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of the counting loss (Noroozi, Pirsiavash, Favaro, "Representation Learning by Learning to
    Count", ICCV 2017), each averaged over the batch:
    ``||phi(D x) - sum_j phi(T_j x)||^2`` and ``max(0, M - ||phi(D y) - sum_j phi(T_j x)||^2)``.

    ``whole`` (B, K) holds the count vectors of the downscaled images ``phi(D x)``, ``tiles`` (B, T, K) those of
    their tiles ``phi(T_j x)``, ``other`` (B, K) those of another image ``phi(D y)`` per sample, ``margin`` is
    ``M``. The second term keeps the counts from collapsing to the trivial all-zero solution: the tiles' sum must
    lie at least ``sqrt(M)`` from another image's count. Returns ``(match, contrast)``; the loss is their sum.
    """
    total = tiles.float().sum(1)
    match = (whole.float() - total).square().sum(1)
    contrast = (margin - (other.float() - total).square().sum(1)).clamp(min=0.0)
    return match.mean(), contrast.mean()


@full_precision
def transform_regression_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AET's loss (Zhang, Qi, Wang, Luo, "AET vs. AED: Unsupervised Representation Learning by Auto-Encoding
    Transformations rather than Data", CVPR 2019): ``0.5 ||M(t) - M(t_hat)||^2`` between the predicted (B, P) and
    the true (B, P) transformation parameters, averaged over the batch. No gradient flows into ``target``."""
    return 0.5 * (predicted.float() - target.detach().float()).square().sum(1).mean()
