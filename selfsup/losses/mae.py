"""The masked autoencoder's reconstruction loss (He, Chen, Xie, Li, Dollár, Girshick, "Masked Autoencoders Are
Scalable Vision Learners", CVPR 2022): mean squared error on the pixels of the masked patches only, each target
patch optionally normalised by its own mean and standard deviation. Runs in float32 (:mod:`.base`)."""

from __future__ import annotations

import torch

from selfsup.losses.base import full_precision


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Every patch ``(..., K)`` as ``(x - mean) / sqrt(var + eps)`` with its own mean and unbiased variance over
    its ``K`` values (MAE's ``norm_pix_loss`` target)."""
    mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


@full_precision
def masked_patch_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     norm_pix: bool = True) -> torch.Tensor:
    """``sum_{b,i} m_bi mean_k (pred_bik - t_bik)^2 / sum_{b,i} m_bi``: the squared error per patch, averaged over
    its ``K`` values, then over the masked patches (``mask`` ``(B, N)`` is 1 on them). ``pred`` and ``target``
    are ``(B, N, K)``; ``t`` is ``target`` normalised per patch (:func:`normalize_patches`) with ``norm_pix``.
    No gradient flows into ``target``."""
    t = target.detach().float()
    if norm_pix:
        t = normalize_patches(t)
    per_patch = (pred.float() - t).square().mean(-1)
    m = mask.detach().float()
    return (per_patch * m).sum() / m.sum()
