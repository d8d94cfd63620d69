"""Cosine-similarity classifiers: logits are a learnable scale times the cosine between the features and one
weight vector per class (Gidaris & Komodakis, "Dynamic Few-Shot Visual Learning without Forgetting", CVPR 2018;
BoWNet's bag-of-words predictor, Gidaris et al., CVPR 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosineClassifier(nn.Module):
    """``gamma * cos(x, w_k)`` for ``classes`` weight vectors ``w_k`` of ``dim`` entries; ``gamma`` (``scale`` at
    the start) is learnt unless ``learn_scale=False``."""

    def __init__(self, dim: int, classes: int, scale: float = 10.0, learn_scale: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * (2.0 / dim) ** 0.5)
        self.scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=learn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T
