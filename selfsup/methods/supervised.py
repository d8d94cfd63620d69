"""Supervised cross-entropy on labels: the upper bound row of every results table."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.views import augmented, augmented_views
from selfsup.methods.base import Batch, Method
from selfsup.methods.panels import Panel


class Supervised(Method):
    """The upper bound of every table: the same backbone trained on the labels with cross-entropy (one augmented
    view, a linear classifier), for the same budget as the self-supervised run."""

    name = "supervised"
    paper = "supervised baseline (cross-entropy on the labels, same backbone and budget)"
    needs_labels = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.classifier = nn.Linear(self.feat_dim, self.num_classes)

    def training_step(self, batch: Batch) -> torch.Tensor:
        x = augmented_views(batch.images, self.aug, self.image_size, batch.generator, n=1)
        return F.cross_entropy(self.classifier(self.backbone(x)).float(), batch.labels)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        x = augmented(batch.images, self.aug, self.image_size, batch.generator)
        return [Panel("the view and its label", x, [f"class {c}" for c in batch.labels.tolist()])]
