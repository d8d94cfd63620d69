"""RotNet: predict which of 0/90/180/270 degrees an image was rotated by (Gidaris et al., ICLR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.ops.rotate import rotations
from selfsup.data.views import augmented, prepare
from selfsup.heads import MLP
from selfsup.methods.base import Batch, Method
from selfsup.methods.panels import Panel


class RotNet(Method):
    """Every image of the batch in all four rotations (0, 90, 180, 270 degrees), the backbone and a classifier
    predict which; light augmentation (crops and flips) as in the paper. The rotation task is only solvable by
    recognising objects and their canonical orientation."""

    name = "rotnet"
    paper = "Gidaris, Singh, Komodakis, Unsupervised Representation Learning by Predicting Image Rotations, ICLR 2018"
    # the paper trains on the rotated images with only light augmentation (crops and flips)
    augment_defaults = {"crop_scale": (0.5, 1.0), "jitter_p": 0.0, "gray_p": 0.0}

    def __init__(self, *args, head_hidden_dim: int = 512, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # the paper's classifier is the network's upper blocks; an MLP keeps the last features less task-specific
        self.classifier = MLP(self.feat_dim, head_hidden_dim, 4) if head_hidden_dim else nn.Linear(self.feat_dim, 4)

    def _rotated(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The four rotations of every augmented image, float [0, 1], and their classes."""
        return rotations(augmented(batch.images, self.aug, self.image_size, batch.generator))

    def training_step(self, batch: Batch) -> torch.Tensor:
        x, target = self._rotated(batch)
        return F.cross_entropy(self.classifier(self.backbone(prepare(x))).float(), target)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        x, target = self._rotated(batch)
        return [Panel(f"rotated by {90 * k} degrees", part, [f"class {c}" for c in t.tolist()])
                for k, (part, t) in enumerate(zip(x.chunk(4), target.chunk(4), strict=True))]
