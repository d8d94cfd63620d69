"""The rotation and invariance terms of rotation feature decoupling (Feng, Xu, Tao, "Self-Supervised Representation
Learning by Rotation Feature Decoupling", CVPR 2019, section 3); its instance term is NPID's
(:func:`selfsup.losses.instance_softmax`, :func:`selfsup.losses.info_nce`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.base import full_precision


@torch.no_grad()
def rotation_ambiguity_weights(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """The paper's weight of every rotated image: 1 for the unrotated ones (label 0), ``1 - p ** gamma``
    for the others, with ``p`` the probability that the rotated image is an unrotated one. The paper takes ``p``
    from a separately trained positive-unlabeled classifier (unrotated images positive, rotated ones unlabeled);
    here it is the rotation classifier's own softmax probability of "0 degrees" (no gradient): a rotated image
    that looks upright to the network, one whose orientation is ambiguous, counts less."""
    p = F.softmax(logits.detach().float(), dim=1)[:, 0]
    return torch.where(labels == 0, 1.0, 1.0 - p.pow(gamma))


@full_precision
def weighted_rotation_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weighted rotation loss ``1 / (N K) sum_i sum_y w_iy l(F(X_iy), y)``, ``l`` the cross-entropy: the mean
    over all rotated images of their weighted cross-entropy (not a weighted mean: down-weighting lowers the loss)."""
    return (F.cross_entropy(logits.float(), labels, reduction="none") * weights.float()).mean()


@full_precision
def rotation_invariance_loss(features: torch.Tensor) -> torch.Tensor:
    """The rotation-invariance term: every rotated copy's rotation-irrelevant feature pulled to the mean over the
    copies of its image, ``features`` (K, N, d): ``1 / (N K d) sum_i sum_y ||f_iy - mean_y f_iy||^2``. The mean is
    a target without gradient and the squared distance is averaged over the ``d`` dimensions, as the authors' code
    does (``MSELoss`` against a detached mean), so the term does not grow with the feature width."""
    features = features.float()
    return (features - features.mean(0, keepdim=True).detach()).square().mean()
