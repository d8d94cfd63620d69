"""Per-pixel foreground losses: the class-balanced binary cross-entropy that Pathak, Girshick, Dollár, Darrell,
Hariharan ("Learning Features by Watching Objects Move", CVPR 2017) train their motion-segmentation network with,
where moving pixels are few. Float32 even inside a bf16 autocast region (:mod:`.base`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.base import full_precision


@full_precision
def foreground_bce(logits: torch.Tensor, targets: torch.Tensor, balanced: bool = True) -> torch.Tensor:
    """The binary cross-entropy of per-pixel foreground ``logits`` ``(B, 1, H, W)`` against 0/1 ``targets`` of the
    same shape. ``balanced``: every image's foreground and background pixels weigh half each (the mean of each
    class's mean cross-entropy; an image with one class present is that class's mean), then the images' mean; else
    the mean over every pixel."""
    t = targets.detach().float().flatten(1)
    bce = F.binary_cross_entropy_with_logits(logits.float().flatten(1), t, reduction="none")
    if not balanced:
        return bce.mean()
    n_fg = t.sum(1)
    n_bg = t.shape[1] - n_fg
    fg = (bce * t).sum(1) / n_fg.clamp_min(1.0)
    bg = (bce * (1.0 - t)).sum(1) / n_bg.clamp_min(1.0)
    present = (n_fg > 0).float() + (n_bg > 0).float()
    return ((fg + bg) / present).mean()
