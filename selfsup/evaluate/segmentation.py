"""Semantic segmentation transfer: the whole encoder fine-tuned with a light decoder on its stage maps, scored by
mean intersection-over-union (Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015: mIoU and pixel accuracy; the seeds' PASCAL VOC segmentation transfer, e.g. Pathak et al., "Context
Encoders", CVPR 2016, and Zhang, Isola, Efros, "Colorful Image Colorization", ECCV 2016)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.dense import IGNORE, DenseSet
from selfsup.data.ops.dense import dense_views
from selfsup.data.views import eval_view, prepare
from selfsup.evaluate.transfer import StageMaps, fit, spatial_levels, tuning
from selfsup.heads.decoder import PixelDecoder


class SegmentationNet(nn.Module):
    """The encoder's last ``levels`` stage maps of distinct strides, each through a 1x1 convolution and batch norm to
    ``dim`` channels, resized (bilinear) to the finest one's size and summed (the semantic FPN's merge, without its
    top-down path: Kirillov, Girshick, He, Dollár, "Panoptic Feature Pyramid Networks", CVPR 2019), then a
    :class:`~selfsup.heads.decoder.PixelDecoder` to one logit per class and pixel at the image size. The encoder
    is used as given (copy it first to keep the caller's)."""

    def __init__(self, encoder: nn.Module, num_classes: int, image_size: int, levels: int = 3, dim: int = 128) -> None:
        super().__init__()
        device = next(encoder.parameters()).device
        chosen = spatial_levels(encoder, image_size, levels, device)
        self.body = StageMaps(encoder, chosen)
        self.laterals = nn.ModuleList(nn.Sequential(nn.Conv2d(level.channels, dim, 1, bias=False), nn.BatchNorm2d(dim))
                                      for level in chosen)
        self.finest = min(range(len(chosen)), key=lambda k: chosen[k].stride)
        self.decoder = PixelDecoder(dim, num_classes, chosen[self.finest].stride, hidden=dim)
        self.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = list(self.body(x).values())
        size = maps[self.finest].shape[-2:]
        fused = sum(F.interpolate(lat(m), size=size, mode="bilinear", align_corners=False) if m.shape[-2:] != size
                    else lat(m) for lat, m in zip(self.laterals, maps, strict=True))
        return self.decoder(fused, x.shape[-1])


def confusion(target: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Confusion matrix ``(K, K)`` int64, rows the true class, columns the predicted, over the pixels whose target is
    a class (not :data:`~selfsup.data.dense.IGNORE` nor beyond ``num_classes``)."""
    valid = target < num_classes
    cells = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(cells, minlength=num_classes**2).view(num_classes, num_classes)


def scores_of(matrix: torch.Tensor) -> dict[str, float]:
    """``{"miou", "pixel_acc"}`` of a confusion matrix: IoU ``tp / (tp + fp + fn)`` per class, averaged over the
    classes that occur in the targets or predictions; the share of pixels classified right."""
    m = matrix.double()
    tp = m.diag()
    union = m.sum(0) + m.sum(1) - tp
    seen = union > 0
    return {"miou": (tp[seen] / union[seen]).mean().item() if seen.any() else 0.0,
            "pixel_acc": (tp.sum() / m.sum()).item() if m.sum() > 0 else 0.0}


@torch.no_grad()
def evaluate_segmentation(net: nn.Module, test: DenseSet, image_size: int, batch_size: int = 64) -> dict[str, float]:
    """mIoU and pixel accuracy of ``net`` (eval mode) on ``test``: images resized to ``image_size``, logits resized
    (bilinear) to the masks' size, argmax per pixel."""
    net.eval()
    device = next(net.parameters()).device
    k = test.num_classes
    matrix = torch.zeros(k, k, dtype=torch.long, device=device)
    for start in range(0, len(test), batch_size):
        logits = net(eval_view(test.images[start : start + batch_size].to(device), image_size))
        target = test.segmentation[start : start + batch_size].to(device)
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        matrix += confusion(target, logits.argmax(1), k)
    return scores_of(matrix.cpu())


def segment(encoder: nn.Module, train: DenseSet, test: DenseSet, *, epochs: int = 20, batch_size: int = 16,
            lr: float = 0.02, backbone_lr: float | None = None, weight_decay: float = 1e-4, levels: int = 3,
            dim: int = 128, augment: bool = True, crop_scale: tuple[float, float] = (0.5, 1.0), flip_p: float = 0.5,
            image_size: int | None = None, device: str | torch.device | None = None, seed: int = 0,
            progress: Callable[[str], None] | None = None) -> dict:
    """Fine-tune a copy of ``encoder`` (an ImageNet-normalised RGB encoder: a pretrained, random-init or random-rescaled
    one; the caller's is untouched) with a :class:`SegmentationNet` decoder on ``train``'s masks and return
    ``{"miou", "pixel_acc", "curve": [test mIoU after every epoch]}`` on ``test``.

    Cross-entropy per pixel, :data:`~selfsup.data.dense.IGNORE` pixels left out; SGD with momentum 0.9 and
    ``weight_decay``, linear warmup over the first 10% of the steps then a cosine to 0: ``lr`` for the decoder,
    ``backbone_lr`` for the encoder (default ``lr``: the whole network at one rate, as MoCo's transfer; 0 freezes
    it, in eval mode). With ``augment``, every batch gets one random resized crop (area in ``crop_scale``) and a
    flip with probability ``flip_p``, the same for image and mask (:func:`~selfsup.data.ops.dense.dense_views`).
    Images are resized to ``image_size`` (default: the size the encoder was trained at, else the set's).
    """
    run = tuning(encoder, train, test, "segmentation", epochs=epochs, batch_size=batch_size, lr=lr,
                 backbone_lr=backbone_lr, augment=augment, crop_scale=crop_scale, flip_p=flip_p,
                 image_size=image_size, device=device, seed=seed)
    net = SegmentationNet(run.trunk, train.num_classes, run.size, levels, dim)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        x, masks, _, _ = dense_views(train.images[idx].to(run.device), run.size, run.generator,
                                     train.segmentation[idx].to(run.device), **run.views)
        return F.cross_entropy(net(prepare(x)), masks.long(), ignore_index=IGNORE)

    last: dict[str, float] = {}

    def score() -> float:
        last.update(evaluate_segmentation(net, test, run.size))
        return last["miou"]

    curve = fit(run, net, loss_of, score, n=len(train), epochs=epochs, batch_size=batch_size,
                weight_decay=weight_decay, progress=progress, metric="mIoU")
    return {**last, "curve": curve}
