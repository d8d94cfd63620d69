"""Losses of dense geometric targets: depth, surface normals and contours, as the synthetic multi-task pretext trains
them (Ren & Lee, "Cross-Domain Self-supervised Multi-task Feature Learning using Synthetic Imagery", CVPR 2018).

- depth: the mean absolute error (``l1``), or the reverse Huber loss (``berhu``) of Laina, Rupprecht, Belagiannis,
  Tombari, Navab ("Deeper Depth Prediction with Fully Convolutional Residual Networks", 3DV 2016, eq. 1);
- surface normals: one minus the cosine between the prediction and the unit target per pixel (``cosine``, the
  released code's CosineEmbeddingLoss), or the squared error of the raw prediction to the unit normal (``l2``);
- contours: the class-balanced sigmoid cross-entropy of HED (Xie & Tu, "Holistically-Nested Edge Detection", ICCV
  2015, eq. 2), which Ren & Lee use for their instance contours.

Every loss averages over pixels and samples, so that its scale depends on neither batch nor image size, and runs in
float32 even inside a bf16 autocast region (:mod:`.base`). No gradient flows into the targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.base import full_precision
from selfsup.losses.pixel import reconstruction_error

DEPTH_LOSSES = ("l1", "berhu")
NORMAL_LOSSES = ("cosine", "l2")
#: berHu's threshold c as a fraction of the batch's largest absolute error (Laina et al.: 1/5)
BERHU_FRACTION = 0.2


@full_precision
def depth_error(prediction: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """``l1``: mean ``|e|`` over every pixel, ``e = prediction - target``. ``berhu``: mean of ``|e|`` where
    ``|e| <= c`` and ``(e^2 + c^2) / (2 c)`` beyond, ``c = 0.2 max |e|`` over the batch (a constant: no gradient
    flows through it)."""
    if kind == "l1":
        return reconstruction_error(prediction, target, "l1")
    err = (prediction.float() - target.detach().float()).abs()
    c = (BERHU_FRACTION * err.detach().max()).clamp_min(1e-12)
    return torch.where(err <= c, err, (err.square() + c * c) / (2 * c)).mean()


@full_precision
def normal_error(prediction: torch.Tensor, target: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Predicted normals ``(B, 3, H, W)`` (any length) against unit ``target`` normals. ``cosine``: the mean over
    pixels of ``1 - cos(prediction, target)``; ``l2``: the mean over pixels of ``|prediction - target|^2`` (summed
    over the 3 components)."""
    t = target.detach().float()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(prediction.float(), t, dim=1, eps=1e-8)).mean()
    return (prediction.float() - t).square().sum(1).mean()


def contour_weights(target: torch.Tensor) -> torch.Tensor:
    """HED's class-balancing weights, the shape of the 0/1 ``target`` ``(B, 1, H, W)``: per image ``beta = |Y-| /
    |Y|`` (the share of non-contour pixels) on the contour pixels and ``1 - beta`` on the others, so that both
    classes weigh alike in every image."""
    t = target.detach().float()
    beta = 1.0 - t.mean((1, 2, 3), keepdim=True)
    return beta * t + (1.0 - beta) * (1.0 - t)


@full_precision
def balanced_contour_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """HED's class-balanced cross-entropy of per-pixel contour ``logits`` against the 0/1 ``target`` ``(B, 1, H, W)``:
    ``-beta sum_{Y+} log sigmoid(z) - (1 - beta) sum_{Y-} log(1 - sigmoid(z))`` per image (:func:`contour_weights`),
    divided by its pixel count, then the images' mean."""
    t = target.detach().float()
    bce = F.binary_cross_entropy_with_logits(logits.float(), t, reduction="none")
    return (contour_weights(t) * bce).mean()


def geometry_losses(predicted: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], depth: str = "l1",
                    normals: str = "cosine") -> dict[str, torch.Tensor]:
    """The three task losses of predicted ``depth``, ``normals`` and ``contours`` logits against their targets:
    :func:`depth_error` (``depth`` kind), :func:`normal_error` (``normals`` kind), :func:`balanced_contour_bce`."""
    return {"depth": depth_error(predicted["depth"], targets["depth"], depth),
            "normals": normal_error(predicted["normals"], targets["normals"], normals),
            "contours": balanced_contour_bce(predicted["contours"], targets["contours"])}
