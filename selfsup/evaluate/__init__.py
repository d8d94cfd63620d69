"""The evaluation protocol: kNN, linear probe and per-layer probes on frozen features.

Every function takes any backbone ``nn.Module`` and two labeled :class:`~selfsup.data.ImageSet`
splits, e.g. ``selfsup.evaluate.knn(run.backbone, data.train, data.test)``.
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.backbones import stage_names
from selfsup.data.sources import ImageSet
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.knn import knn_top1
from selfsup.evaluate.linear import linear_top1

__all__ = ["extract_features", "knn", "knn_top1", "layers", "linear", "linear_top1", "probe", "scores"]


def _features(backbone: nn.Module, train: ImageSet, test: ImageSet, image_size: int | None,
              device: str | torch.device | None, stages: bool = False):
    """Frozen features of both splits at ``image_size`` (default: the images' own size)."""
    size = image_size or int(train.images.shape[-1])
    return tuple(extract_features(backbone, s.images, size, device=device, stages=stages) for s in (train, test))


def probe(backbone: nn.Module, train: ImageSet, test: ImageSet, *, image_size: int | None = None,
          device: str | torch.device | None = None, k: int = 200, temperature: float = 0.1) -> dict[str, float]:
    """kNN and linear-probe top-1 from one feature extraction: ``{"knn_top1": .., "linear_top1": ..}``."""
    ftr, fte = _features(backbone, train, test, image_size, device)
    return scores(ftr, train.labels, fte, test.labels, k, temperature)


def scores(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
           test_labels: torch.Tensor, k: int = 200, temperature: float = 0.1) -> dict[str, float]:
    """kNN and linear-probe top-1 of features already extracted."""
    return {"knn_top1": knn_top1(train_feats, train_labels, test_feats, test_labels, k, temperature),
            "linear_top1": linear_top1(train_feats, train_labels, test_feats, test_labels)}


def knn(backbone: nn.Module, train: ImageSet, test: ImageSet, *, image_size: int | None = None,
        device: str | torch.device | None = None, k: int = 200, temperature: float = 0.1) -> float:
    """kNN top-1 (k=200, votes weighted by exp(sim / 0.1)) of frozen backbone features."""
    ftr, fte = _features(backbone, train, test, image_size, device)
    return knn_top1(ftr, train.labels, fte, test.labels, k, temperature)


def linear(backbone: nn.Module, train: ImageSet, test: ImageSet, *, image_size: int | None = None,
           device: str | torch.device | None = None) -> float:
    """Linear-probe top-1 of frozen backbone features."""
    ftr, fte = _features(backbone, train, test, image_size, device)
    return linear_top1(ftr, train.labels, fte, test.labels)


def layers(backbone: nn.Module, train: ImageSet, test: ImageSet, *, image_size: int | None = None,
           device: str | torch.device | None = None) -> dict[str, float]:
    """Linear-probe top-1 on every stage's output, each pooled to a fixed size (the seeds' per-layer table)."""
    ftr, fte = _features(backbone, train, test, image_size, device, stages=True)
    return {name: linear_top1(a, train.labels, b, test.labels)
            for name, a, b in zip(stage_names(backbone), ftr, fte)}
