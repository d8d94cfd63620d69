"""The adversarial losses of BiGAN's joint discriminator in BigBiGAN's hinge form (Donahue & Simonyan, "Large Scale
Adversarial Representation Learning", NeurIPS 2019, section 3; BiGAN: Donahue, Krähenbühl, Darrell, ICLR 2017).

The discriminator gives every image-latent pair K scores: the joint score s_xz and, with BigBiGAN's unary terms,
s_x (image only) and s_z (latent only). With y = +1 for encoder pairs (x, E(x)) and y = -1 for generator pairs
(G(z), z), the discriminator minimises the mean over pairs of sum_k h(y s_k), h(t) = max(0, 1 - t), and the
generator and encoder minimise the mean of sum_k y s_k. Both functions return the K per-score terms (each the sum
of its means over the real and the fake pairs); the loss is their sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.base import full_precision


@full_precision
def bigan_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge terms ``(K,)`` from the scores ``(N, K)`` of encoder pairs and ``(M, K)`` of
    generator pairs: mean(relu(1 - s_k(real))) + mean(relu(1 + s_k(fake))) for every score k."""
    return F.relu(1.0 - real_scores.float()).mean(0) + F.relu(1.0 + fake_scores.float()).mean(0)


@full_precision
def bigan_eg_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The generator's and encoder's terms ``(K,)``, the labels swapped: mean(s_k(real)) - mean(s_k(fake)) (the
    encoder makes its pairs look generated, the generator makes its pairs look encoded)."""
    return real_scores.float().mean(0) - fake_scores.float().mean(0)
