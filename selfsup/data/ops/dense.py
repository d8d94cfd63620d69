"""The random resized crop and horizontal flip of :mod:`selfsup.data.ops` applied alike to an image batch and its
dense targets: segmentation masks (nearest neighbour) and boxes (the object detectors' training augmentation, e.g.
Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015; Ren et al., "Faster
R-CNN", NeurIPS 2015), and depth, surface normal and contour maps (the synthetic multi-task pretext's targets: Ren
& Lee, "Cross-Domain Self-supervised Multi-task Feature Learning using Synthetic Imagery", CVPR 2018). Crops are
``(top, left, h, w)`` rows as :func:`~selfsup.data.ops.crop.sample_resized_crop` draws them; boxes are ``(B, M, 4)``
xyxy in pixels with 1-based labels ``(B, M)``, rows padded with -1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.data.ops.base import to_float
from selfsup.data.ops.color import hflip, sample_flags
from selfsup.data.ops.crop import resized_crop, sample_resized_crop
from selfsup.data.ops.video import shared_crop

#: the dense geometric targets (uint8 fields), in the order of their channels in the stack the crop acts on, with
#: their channel counts
GEOMETRY_MAPS = {"depth": 1, "normals": 3, "contours": 1}


def nearest_rows(start: Tensor, length: Tensor, out_size: int) -> Tensor:
    """Source indices ``(B, out_size)`` of a nearest-neighbour resize of spans ``[start, start + length)``:
    ``start + min(floor((dst + 0.5) * length / out_size), length - 1)`` (PyTorch's ``nearest-exact``, float32)."""
    dst = torch.arange(out_size, device=start.device, dtype=torch.float32).add_(0.5)
    src = (dst * (length.float() / out_size)[:, None]).floor_()
    return torch.minimum(src, length.float()[:, None] - 1).add_(start.float()[:, None]).long()


def crop_masks(masks: Tensor, crops: Tensor, size: int) -> Tensor:
    """Crop every mask ``(B, H, W)`` (any dtype) to its crop and resize it to ``size`` by nearest neighbour: as
    torchvision ``resized_crop(mask, top, left, h, w, size, InterpolationMode.NEAREST_EXACT)`` mask by mask, in one
    gather (class ids are never blended)."""
    crops = crops.to(masks.device)
    top, left, h, w = crops.unbind(1)
    rows = nearest_rows(top, h, size)
    cols = nearest_rows(left, w, size)
    batch = torch.arange(len(masks), device=masks.device)
    return masks[batch[:, None, None], rows[:, :, None], cols[:, None, :]]


def valid_boxes(labels: Tensor) -> Tensor:
    """Which rows of a padded box tensor hold a box (label >= 1)."""
    return labels >= 1


def crop_boxes(boxes: Tensor, labels: Tensor, crops: Tensor, size: int,
               min_size: float = 1.0) -> tuple[Tensor, Tensor]:
    """Boxes ``(B, M, 4)`` xyxy of the crops resized to ``size``: shifted by the crop's corner, clamped to it, scaled
    by ``size / h`` and ``size / w``; boxes then narrower or shorter than ``min_size`` px (cut off by the crop) and
    padded rows become -1, their labels too (torchvision ``resized_crop`` on ``BoundingBoxes``, then
    ``SanitizeBoundingBoxes(min_size)``)."""
    crops = crops.to(boxes.device, torch.float32)
    top, left, h, w = (c[:, None] for c in crops.unbind(1))
    x1, y1, x2, y2 = boxes.unbind(-1)
    x1, x2 = ((x - left).clamp(min=0.0).minimum(w) * (size / w) for x in (x1, x2))
    y1, y2 = ((y - top).clamp(min=0.0).minimum(h) * (size / h) for y in (y1, y2))
    keep = valid_boxes(labels) & (x2 - x1 >= min_size) & (y2 - y1 >= min_size)
    out = torch.stack([x1, y1, x2, y2], -1)
    return out.masked_fill(~keep[..., None], -1.0), labels.masked_fill(~keep, -1)


def flip_masks(masks: Tensor, flags: Tensor) -> Tensor:
    """Mirror the flagged masks ``(B, H, W)`` left-right."""
    return torch.where(flags.to(masks.device).view(-1, 1, 1), masks.flip(-1), masks)


def flip_boxes(boxes: Tensor, labels: Tensor, flags: Tensor, width: int) -> Tensor:
    """Mirror the flagged samples' boxes in an image ``width`` px wide: ``(x1, x2) -> (width - x2, width - x1)``;
    padded rows stay -1."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    mirrored = torch.stack([width - x2, y1, width - x1, y2], -1)
    flip = flags.to(boxes.device).view(-1, 1) & valid_boxes(labels)
    return torch.where(flip[..., None], mirrored, boxes)


def dense_views(images: Tensor, size: int, generator: torch.Generator, masks: Tensor | None = None,
                boxes: Tensor | None = None, labels: Tensor | None = None,
                scale: tuple[float, float] = (0.5, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                flip_p: float = 0.5, min_size: float = 1.0) -> tuple[Tensor, Tensor | None, Tensor | None,
                                                                       Tensor | None]:
    """One random resized crop (area in ``scale``, aspect ratio in ``ratio``) to ``size`` and a horizontal flip
    with probability ``flip_p`` per sample, the same for an image ``(B, 3, H, W)`` (uint8 or float [0, 1]), its
    mask ``(B, H, W)`` and its boxes and labels ``(B, M, 4)``, ``(B, M)``: returns the float [0, 1] images, the
    masks, the boxes and the labels (None where not given). Parameters come from ``generator`` (crops, then flips)."""
    batch, _, height, width = images.shape
    crops = sample_resized_crop(batch, height, width, scale, ratio, generator, images.device)
    flags = sample_flags(batch, flip_p, generator, images.device)
    x = hflip(resized_crop(to_float(images), crops, size), flags)
    if masks is not None:
        masks = flip_masks(crop_masks(masks, crops, size), flags)
    if boxes is not None:
        boxes, labels = crop_boxes(boxes, labels, crops, size, min_size)
        boxes = flip_boxes(boxes, labels, flags, size)
    return x, masks, boxes, labels


def geometry_views(images: Tensor, fields: dict[str, Tensor] | None, params: Tensor,
                   size: int) -> tuple[Tensor, dict[str, Tensor] | None]:
    """The crops and flips ``params`` ((top, left, h, w, flip) rows,
    :func:`~selfsup.data.ops.video.sample_shared_crop`) of the images (bilinear, float [0, 1]) and of their
    :data:`GEOMETRY_MAPS` if ``fields`` are given (nearest neighbour): depth in [0, 1], unit normals (x negated where
    flipped), 0/1 contours."""
    x = shared_crop(to_float(images), params, size)
    if fields is None:
        return x, None
    flip = params[:, 4].to(images.device) > 0.5
    stack = torch.cat([fields[k].float() for k in GEOMETRY_MAPS], 1).permute(0, 2, 3, 1)
    maps = hflip(crop_masks(stack, params[:, :4], size).permute(0, 3, 1, 2), flip) / 255.0
    depth, normals, contours = maps.split(list(GEOMETRY_MAPS.values()), 1)
    sign = torch.ones(len(flip), 3, 1, 1, device=maps.device)
    sign[:, 0] = torch.where(flip, -1.0, 1.0).view(-1, 1, 1)
    normals = F.normalize((normals * 2.0 - 1.0) * sign, dim=1, eps=1e-8)
    return x, {"depth": depth, "normals": normals, "contours": (contours >= 0.5).float()}
