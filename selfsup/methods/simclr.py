"""SimCLR: two augmented views, projection MLP, NT-Xent (Chen et al., ICML 2020)."""

from __future__ import annotations

import torch

from selfsup.data.views import augmented_views
from selfsup.heads import MLP
from selfsup.losses import nt_xent
from selfsup.methods.base import Batch, Method


class SimCLR(Method):
    """Two augmented views of every image (random resized crop, flip, colour jitter, grayscale; blur at >= 64 px
    in the recipes) go through the backbone and a 2-layer MLP projector; NT-Xent makes each view pick its partner
    out of the 2N - 2 other views of the batch (gathered across processes), at temperature ``temperature`` (0.5,
    the paper's CIFAR value; 0.1 for ImageNet). Evaluation uses the backbone, before the projector.
    ``proj_last_bn`` ends the projector with a BatchNorm, as SimCLR v2 and lightly's SimCLR head do."""

    name = "simclr"
    paper = "Chen et al., A Simple Framework for Contrastive Learning of Visual Representations, ICML 2020"

    def __init__(self, *args, temperature: float = 0.5, proj_hidden_dim: int = 512, proj_dim: int = 128,
                 proj_last_bn: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.temperature = temperature
        self.projector = MLP(self.feat_dim, proj_hidden_dim, proj_dim, last_bn=proj_last_bn)

    def training_step(self, batch: Batch) -> torch.Tensor:
        x = augmented_views(batch.images, self.aug, self.image_size, batch.generator)
        z1, z2 = self.projector(self.backbone(x)).chunk(2)
        return self.objective(z1, z2, batch)

    def objective(self, z1: torch.Tensor, z2: torch.Tensor, batch: Batch) -> torch.Tensor:
        """NT-Xent over the two views' projections."""
        return nt_xent(z1, z2, self.temperature)
