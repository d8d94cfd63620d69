"""Object detection transfer: the whole encoder fine-tuned as the body of a one-stage detector, scored by mean average
precision (Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010: AP at IoU 0.5 with
all-point interpolation; the seeds' VOC detection transfer, e.g. Doersch, Gupta, Efros, ICCV 2015, and He et al.,
"Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020).

The detector is torchvision's FCOS (Tian, Shen, Chen, He, "FCOS: Fully Convolutional One-Stage Object Detection",
ICCV 2019): anchor-free, so small images need no anchor tuning, only its per-level scale ranges, which follow the
strides of the encoder's maps (a location of stride s answers for objects reaching 4s to 8s from it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from selfsup.data.dense import DenseSet
from selfsup.data.ops.base import resize
from selfsup.data.ops.dense import dense_views, valid_boxes
from selfsup.evaluate.transfer import StageMaps, fit, spatial_levels, tuning

#: the box regression's starting bias: every location's first box reaches this many strides to each side
REGRESSION_BIAS = 2.0
#: the IoU thresholds of COCO's mAP@[.5:.95]
COCO_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


class FPNBody(nn.Module):
    """The encoder's last ``levels`` stage maps of distinct strides through a feature pyramid (Lin et al., "Feature
    Pyramid Networks for Object Detection", CVPR 2017; torchvision's ``FeaturePyramidNetwork``) of ``dim`` channels:
    what torchvision's detectors take as a backbone (maps in an OrderedDict, ``out_channels``)."""

    def __init__(self, encoder: nn.Module, image_size: int, levels: int = 3, dim: int = 64) -> None:
        from torchvision.ops import FeaturePyramidNetwork

        super().__init__()
        self.levels = spatial_levels(encoder, image_size, levels, next(encoder.parameters()).device)
        self.body = StageMaps(encoder, self.levels)
        self.fpn = FeaturePyramidNetwork([level.channels for level in self.levels], dim)
        self.out_channels = dim

    def forward(self, x: torch.Tensor):
        return self.fpn(self.body(x))


def build_detector(encoder: nn.Module, num_classes: int, image_size: int, levels: int = 3, dim: int = 64,
                   head_convs: int = 4, score_thresh: float = 0.01) -> nn.Module:
    """torchvision FCOS on :class:`FPNBody` for ``image_size`` px images (no resizing inside; ImageNet mean and std
    applied to its [0, 1] inputs), one point per map location with the map's stride as its size, ``head_convs``
    GroupNorm conv layers per branch; ``num_classes`` counts the background (labels 1..K). The regression bias starts
    at :data:`REGRESSION_BIAS`, not 0: torchvision's FCOS clamps the predicted distances with a ReLU (the paper takes
    ``exp(s x)``), so a start at 0 leaves half the locations with no gradient to grow their boxes (on 64 tiny scenes,
    4 epochs: mAP@0.5 0-0.17 from 0, 0.5-0.6 from 2)."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead

    body = FPNBody(encoder, image_size, levels, dim)
    strides = tuple((level.stride,) for level in body.levels)
    anchors = AnchorGenerator(strides, ((1.0,),) * len(strides))
    head = FCOSHead(dim, 1, num_classes, num_convs=head_convs)
    nn.init.constant_(head.regression_head.bbox_reg.bias, REGRESSION_BIAS)
    return FCOS(body, num_classes, min_size=image_size, max_size=image_size, anchor_generator=anchors, head=head,
                score_thresh=score_thresh).to(next(encoder.parameters()).device)


def targets_of(boxes: torch.Tensor, labels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Padded boxes ``(B, M, 4)`` and labels ``(B, M)`` as torchvision's per-image target dicts."""
    keep = valid_boxes(labels)
    return [{"boxes": b[k], "labels": lab[k]} for b, lab, k in zip(boxes, labels, keep, strict=True)]


def match(ious: torch.Tensor, threshold: float) -> torch.Tensor:
    """Which detections ``(D,)`` are true positives, given their IoUs ``(D, G)`` with one image's ground-truth boxes of
    their class, detections in descending score order (VOC's rule: a detection takes the box it overlaps most; it is
    right when that overlap reaches ``threshold`` and no higher-scored detection took the box)."""
    d, g = ious.shape
    if g == 0 or d == 0:
        return torch.zeros(d, dtype=torch.bool)
    best_iou, best = ious.max(1)
    ok = best_iou >= threshold
    order = torch.arange(d)
    first = torch.full((g,), d).scatter_reduce(0, best[ok], order[ok], "amin")
    return ok & (first[best] == order)


def average_precision(hits: torch.Tensor, n_true: int) -> float:
    """VOC's all-point interpolated AP of detections ``hits`` (bool, in descending score order) against ``n_true``
    ground-truth boxes: the area under the precision-recall curve with precision made monotone (each recall's
    precision the best at that recall or beyond)."""
    tp = hits.double().cumsum(0)
    recall = torch.cat([torch.zeros(1), tp / n_true, torch.ones(1)]).double()
    precision = torch.cat([torch.zeros(1), tp / torch.arange(1, len(hits) + 1), torch.zeros(1)]).double()
    precision = precision.flip(0).cummax(0).values.flip(0)
    return float(((recall[1:] - recall[:-1]) * precision[1:]).sum())


def mean_ap(detections: Sequence[dict[str, torch.Tensor]], truths: Sequence[dict[str, torch.Tensor]],
            thresholds: Sequence[float] = (0.5,)) -> dict[float, float]:
    """mAP at every IoU threshold: per class, :func:`average_precision` of all images' detections (``boxes`` xyxy,
    ``scores``, ``labels``) matched image by image (:func:`match`) to the ground truth (``boxes``, ``labels``),
    averaged over the classes with ground-truth boxes (0 when there are none)."""
    from torchvision.ops import box_iou

    scores: dict[int, list[torch.Tensor]] = {}
    hits: dict[int, list[torch.Tensor]] = {}
    n_true: dict[int, int] = {}
    for det, truth in zip(detections, truths, strict=True):
        det = {k: v.detach().cpu() for k, v in det.items()}
        truth = {k: v.cpu() for k, v in truth.items()}
        for c in torch.cat([det["labels"], truth["labels"]]).unique().tolist():
            mine = det["labels"] == c
            order = det["scores"][mine].argsort(descending=True, stable=True)
            true_boxes = truth["boxes"][truth["labels"] == c]
            ious = box_iou(det["boxes"][mine][order].double(), true_boxes.double())
            scores.setdefault(c, []).append(det["scores"][mine][order])
            hits.setdefault(c, []).append(torch.stack([match(ious, t) for t in thresholds], 1))
            n_true[c] = n_true.get(c, 0) + len(true_boxes)
    out = {}
    for i, t in enumerate(thresholds):
        aps = []
        for c, n in n_true.items():
            if n:
                order = torch.cat(scores[c]).argsort(descending=True, stable=True)
                aps.append(average_precision(torch.cat(hits[c])[order, i], n))
        out[t] = sum(aps) / len(aps) if aps else 0.0
    return out


@torch.no_grad()
def evaluate_detection(model: nn.Module, test: DenseSet, image_size: int, batch_size: int = 64,
                       thresholds: Sequence[float] = COCO_THRESHOLDS) -> dict[str, float]:
    """``{"map50", "map"}`` (mAP at IoU 0.5, and averaged over ``thresholds``: COCO's 0.5:0.95 by default, with
    VOC's all-point AP) of ``model`` (eval mode) on ``test``, images and boxes resized to ``image_size``."""
    model.eval()
    device = next(model.parameters()).device
    scale = image_size / test.images.shape[-1]
    detections, truths = [], []
    for start in range(0, len(test), batch_size):
        x = resize(test.images[start : start + batch_size].to(device), image_size)
        detections += model(list(x))
        boxes = test.boxes[start : start + batch_size] * scale
        truths += targets_of(boxes, test.box_labels[start : start + batch_size])
    maps = mean_ap(detections, truths, sorted({0.5, *thresholds}))
    return {"map50": maps[0.5], "map": sum(maps[t] for t in thresholds) / len(thresholds)}


def detect(encoder: nn.Module, train: DenseSet, test: DenseSet, *, epochs: int = 20, batch_size: int = 16,
           lr: float = 0.01, backbone_lr: float | None = None, weight_decay: float = 1e-4, levels: int = 3,
           dim: int = 64, head_convs: int = 4, augment: bool = True, crop_scale: tuple[float, float] = (0.5, 1.0),
           flip_p: float = 0.5, image_size: int | None = None, device: str | torch.device | None = None, seed: int = 0,
           progress: Callable[[str], None] | None = None) -> dict:
    """Fine-tune a copy of ``encoder`` (an ImageNet-normalised RGB encoder: a pretrained, random-init or random-rescaled
    one; the caller's is untouched) as the body of :func:`build_detector` on ``train``'s boxes and return ``{"map50",
    "map" (mAP@[.5:.95]), "curve": [test mAP@0.5 after every epoch]}`` on ``test``.

    FCOS's losses (focal, GIoU, centre-ness); SGD with momentum 0.9 and ``weight_decay``, linear warmup over the first
    10% of the steps then a cosine to 0: ``lr`` for the pyramid and head, ``backbone_lr`` for the encoder (default
    ``lr``; 0 freezes it, in eval mode). With ``augment``, every batch gets one random resized crop (area in
    ``crop_scale``) and a flip with probability ``flip_p``, the same for image and boxes (boxes cut below 1 px are
    left out). Images are resized to ``image_size`` (default: the size the encoder was trained at, else the set's).
    """
    run = tuning(encoder, train, test, "boxes", epochs=epochs, batch_size=batch_size, lr=lr,
                 backbone_lr=backbone_lr, augment=augment, crop_scale=crop_scale, flip_p=flip_p,
                 image_size=image_size, device=device, seed=seed)
    model = build_detector(run.trunk, train.num_classes, run.size, levels, dim, head_convs)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        x, _, boxes, labels = dense_views(train.images[idx].to(run.device), run.size, run.generator,
                                          boxes=train.boxes[idx].to(run.device),
                                          labels=train.box_labels[idx].to(run.device), **run.views)
        return sum(model(list(x), targets_of(boxes, labels)).values())

    last: dict[str, float] = {}

    def score() -> float:
        last.update(evaluate_detection(model, test, run.size))
        return last["map50"]

    curve = fit(run, model, loss_of, score, n=len(train), epochs=epochs, batch_size=batch_size,
                weight_decay=weight_decay, progress=progress, metric="mAP@0.5")
    return {**last, "curve": curve}
