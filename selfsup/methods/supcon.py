"""Supervised contrastive learning: every same-label view is a positive (Khosla et al., NeurIPS 2020)."""

from __future__ import annotations

import torch

from selfsup.data.views import augmented_views
from selfsup.heads import MLP
from selfsup.losses import supcon_loss
from selfsup.methods.base import Batch, Method


class SupCon(Method):
    """SimCLR's views and projector with the L_out supervised contrastive loss over both views (T = 0.1)."""

    name = "supcon"
    paper = "Khosla et al., Supervised Contrastive Learning, NeurIPS 2020"
    needs_labels = True

    def __init__(self, *args, temperature: float = 0.1, proj_hidden_dim: int = 512, proj_dim: int = 128,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.temperature = temperature
        self.projector = MLP(self.feat_dim, proj_hidden_dim, proj_dim)

    def training_step(self, batch: Batch) -> torch.Tensor:
        x = augmented_views(batch.images, self.aug, self.image_size, batch.generator)
        z1, z2 = self.projector(self.backbone(x)).chunk(2)
        return supcon_loss(z1, z2, batch.labels, self.temperature)
