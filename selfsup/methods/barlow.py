"""Barlow Twins: drive the cross-correlation of two views' embeddings to the identity
(Zbontar, Jing, Misra, LeCun, Deny, ICML 2021)."""

from __future__ import annotations

import torch

from selfsup.data.views import augmented_views
from selfsup.heads import MLP
from selfsup.losses import barlow_twins_loss
from selfsup.methods.base import Batch, Method


class BarlowTwins(Method):
    """A 3-layer projector (8192 wide in the paper; 2048 by default here, for small data); the loss
    batch-normalises each embedding dimension over the global batch, so no output BN layer is needed.
    ``scale_loss`` multiplies the loss (solo-learn's CIFAR recipe: 0.1; the paper: 1)."""

    name = "barlow"
    paper = "Zbontar et al., Barlow Twins: Self-Supervised Learning via Redundancy Reduction, ICML 2021"
    #: LARS as in the paper. Its base rate for weights (0.2, for 1000 epochs) and plain SGD both leave the digits
    #: kNN at or below random init after 150 steps; 1.0 beats it. recipes/imagenet keeps the paper's rates
    #: (with its 0.024x rate for biases and norms); recipes/cifar10 takes solo-learn's CIFAR settings
    optimizer = "lars"
    base_lr = 1.0

    def __init__(self, *args, lambd: float = 0.0051, proj_hidden_dim: int = 2048, proj_dim: int = 2048,
                 scale_loss: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lambd, self.scale_loss = lambd, scale_loss
        self.projector = MLP(self.feat_dim, proj_hidden_dim, proj_dim, num_layers=3)

    def training_step(self, batch: Batch) -> torch.Tensor:
        x = augmented_views(batch.images, self.aug, self.image_size, batch.generator)
        z1, z2 = self.projector(self.backbone(x)).chunk(2)
        return self.scale_loss * barlow_twins_loss(z1, z2, self.lambd)
