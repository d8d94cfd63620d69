"""Adversarial losses of the discriminator and the generator, from the discriminator's real/fake logits.

The hinge loss is SNGAN's (Miyato et al., ICLR 2018; from Lim & Ye, arXiv 2017); the non-saturating loss is
Goodfellow et al.'s (NeurIPS 2014, section 3), the default of compare_gan, the code of SSGAN (Chen et al.,
CVPR 2019). SSGAN's rotation loss is a plain ``F.cross_entropy`` over the four rotation classes, added with weight
1 to the discriminator's loss (real images) and 0.2 to the generator's (fake images).

Every loss runs in float32 even inside the trainer's bf16 autocast region
(:func:`selfsup.losses.base.full_precision`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.base import full_precision


@full_precision
def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))."""
    return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()


@full_precision
def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's loss under the hinge discriminator: -mean(D(fake))."""
    return -fake_logits.float().mean()


@full_precision
def ns_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's cross-entropy: -mean(log sigmoid(D(real))) - mean(log(1 - sigmoid(D(fake))))."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


@full_precision
def ns_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss: -mean(log sigmoid(D(fake)))."""
    return F.softplus(-fake_logits.float()).mean()
