"""Triplet / margin ranking with positives from augmentation (after Wang & Gupta, ICCV 2015)."""

from __future__ import annotations

import torch

from selfsup.data.views import augmented_views
from selfsup.errors import UserError
from selfsup.heads import MLP
from selfsup.losses import triplet_loss
from selfsup.methods.base import Batch, Method


class Triplet(Method):
    """Anchor = view 1 of an image, positive = its view 2, negative = the hardest (``mining="hard"``) or a
    random (``"random"``) other image's view 2 in the batch; margin ranking on L2-normalised embeddings
    with the cosine distance, margin 0.5. Wang & Gupta link patches by tracking in video; augmentation
    stands in for tracking here."""

    name = "triplet"
    paper = "Wang & Gupta, Unsupervised Learning of Visual Representations using Videos, ICCV 2015"

    # random negatives by default: with the hardest ones kNN stayed below random init after 1000 CIFAR-10 steps
    # (36.9 vs 39.8) while random ones reached 49.0 (benchmarks/results/cpu_methods.json)
    def __init__(self, *args, margin: float = 0.5, mining: str = "random", proj_hidden_dim: int = 512,
                 proj_dim: int = 128, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if mining not in ("hard", "random"):
            raise UserError(f"triplet: mining must be 'hard' or 'random' (got {mining!r})")
        self.margin, self.mining = margin, mining
        self.projector = MLP(self.feat_dim, proj_hidden_dim, proj_dim)

    def training_step(self, batch: Batch) -> torch.Tensor:
        x = augmented_views(batch.images, self.aug, self.image_size, batch.generator)
        a, p = self.projector(self.backbone(x)).chunk(2)
        return triplet_loss(a, p, self.margin, self.mining, batch.generator)
