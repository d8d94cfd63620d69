"""Bags of visual words over a teacher's feature map, the targets of BoWNet (Gidaris, Bursuc, Komodakis, Pérez,
Cord, "Learning Representations by Predicting Bags of Visual Words", CVPR 2020): the local feature vectors are
softly assigned to a k-means vocabulary (:mod:`selfsup.dynamics.kmeans`) and pooled over the map."""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.dynamics.kmeans import nearest_centroid
from selfsup.errors import UserError

POOLS = ("avg", "max")


def squared_distances(features: Tensor, words: Tensor) -> Tensor:
    """``|f - v_k|^2`` of every row of ``features`` ``(..., C)`` to every word of ``words`` ``(K, C)``:
    ``(..., K)``, as ``|f|^2 + |v|^2 - 2 f.v`` (one matmul), clamped at 0 against rounding."""
    cross = features @ words.T
    return (features.square().sum(-1, keepdim=True) + words.square().sum(-1) - 2.0 * cross).clamp_(min=0.0)


def mean_nearest_distance(features: Tensor, words: Tensor) -> Tensor:
    """The mean over the rows of ``features`` ``(N, C)`` of the squared distance to their nearest word: the scale
    the soft assignment's temperature is relative to (a float64 scalar)."""
    nearest = words[nearest_centroid(features, words)]
    return (features.double() - nearest.double()).square().sum(1).mean()


def soft_bow(fmap: Tensor, words: Tensor, inv_delta: float | Tensor, pool: str = "avg") -> Tensor:
    """The bag of words ``(B, K)`` of feature maps ``fmap`` ``(B, C, h, w)`` over ``words`` ``(K, C)``.

    Every location's feature vector ``f_u`` gets the soft assignment ``q_u = softmax_k(-inv_delta |f_u - v_k|^2)``
    (a hard one-hot as ``inv_delta`` grows); ``pool="avg"`` averages the codes over the ``h * w`` locations (the
    histogram of visual words, Gidaris et al.'s eq. 2 with soft counts), ``"max"`` takes their maximum (whether
    a word occurs, eq. 3); the result is L1-normalised into a distribution over the words. In float32.
    """
    if pool not in POOLS:
        raise UserError(f"bag-of-words pooling must be one of {', '.join(POOLS)}, got '{pool}'")
    with torch.autocast(fmap.device.type, enabled=False):
        local = fmap.float().flatten(2).transpose(1, 2)  # (B, h * w, C)
        codes = torch.softmax(-inv_delta * squared_distances(local, words.float()), dim=-1)
        bow = codes.mean(1) if pool == "avg" else codes.amax(1)
        return bow / bow.sum(1, keepdim=True)
