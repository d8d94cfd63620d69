"""Triplet / margin ranking with positives from augmentation (after Wang & Gupta, ICCV 2015)."""

from __future__ import annotations

import torch

from selfsup.data.views import augmented_views
from selfsup.errors import UserError
from selfsup.heads import MLP
from selfsup.losses import triplet_loss
from selfsup.methods.base import Batch, Method


class Triplet(Method):
    """Anchor = view 1 of an image, positive = its view 2, negatives = other images' view 2 in the batch;
    margin ranking on L2-normalised embeddings with the cosine distance, margin 0.5. Wang & Gupta link
    patches by tracking in video; augmentation stands in for tracking here.

    ``mining="random"``: one random negative per anchor. ``"hard"``: the ``top_k`` closest of ``candidates``
    random others (0: of the whole batch), after random negatives for the first ``hard_from`` share of
    training. The paper starts with random negatives and then takes the top 4 of 100 random ones
    (``mining: hard, hard_from: 0.1, candidates: 100, top_k: 4`` in the recipes).
    """

    name = "triplet"
    paper = "Wang & Gupta, Unsupervised Learning of Visual Representations using Videos, ICCV 2015"

    # random negatives by default: with the hardest ones kNN stayed below random init after 1000 CIFAR-10 steps
    # (36.9 vs 39.8) while random ones reached 49.0 (benchmarks/results/cpu_methods.json)
    def __init__(self, *args, margin: float = 0.5, mining: str = "random", hard_from: float = 0.0,
                 candidates: int = 0, top_k: int = 1, proj_hidden_dim: int = 512, proj_dim: int = 128,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if mining not in ("hard", "random"):
            raise UserError(f"triplet: mining must be 'hard' or 'random' (got {mining!r})")
        if mining == "random" and (candidates or top_k != 1 or hard_from):
            raise UserError("triplet: hard_from, candidates and top_k apply to mining: hard")
        if not 0.0 <= hard_from <= 1.0 or candidates < 0 or top_k < 1:
            raise UserError("triplet: hard_from must be in [0, 1], candidates >= 0 and top_k >= 1")
        self.margin, self.mining, self.hard_from = margin, mining, hard_from
        self.candidates, self.top_k = candidates, top_k
        self.projector = MLP(self.feat_dim, proj_hidden_dim, proj_dim)

    def check_batch(self, global_batch: int) -> None:
        pool = global_batch - 1 if self.candidates == 0 else min(self.candidates, global_batch - 1)
        if self.top_k > pool:
            raise UserError(f"triplet: top_k {self.top_k} is more than the {pool} negatives a batch of "
                            f"{global_batch} offers")

    def training_step(self, batch: Batch) -> torch.Tensor:
        x = augmented_views(batch.images, self.aug, self.image_size, batch.generator)
        a, p = self.projector(self.backbone(x)).chunk(2)
        if self.mining == "random" or batch.progress < self.hard_from:
            return triplet_loss(a, p, self.margin, "random", batch.generator)
        return triplet_loss(a, p, self.margin, "hard", batch.generator, self.candidates, self.top_k)
