"""What the methods that learn from clips share (shuffle-learn, motion-segmentation, color-tracking): the batch's
``frames`` field, checked, one random crop and flip applied alike to every channel of a stack (a tuple's frames, a
frame and its mask; synthetic-multitask's image and its target maps), drawn for the global batch, then the
photometric rest of the augmentation, and what their panels draw over clips: a grid of parts as labels and labels
painted over frames (the propagated masks of Vondrick, Shrivastava, Fathi, Guadarrama, Murphy, "Tracking Emerges by
Colorizing Videos", ECCV 2018)."""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F

from selfsup.data.augment import AugmentConfig
from selfsup.data.ops.video import sample_shared_crop, shared_crop
from selfsup.data.views import augmented, for_this_rank
from selfsup.errors import UserError
from selfsup.methods.panels import mosaic

#: the augmentation options that change pixel values, which a shared crop does not apply
PHOTOMETRIC = ("jitter_p", "gray_p", "blur_p", "solarize_p")


def clip_frames(fields: dict[str, torch.Tensor], method: str, minimum: int, needs: str) -> torch.Tensor:
    """The batch's ``frames`` field ``(B, T, 3, H, W)``, refused with a one-line UserError when the data has no clips
    or clips of fewer than ``minimum`` frames (what ``needs`` them: "a tuple")."""
    frames = fields.get("frames")
    if frames is None:
        raise UserError(f"{method} learns from videos: the data has no 'frames' field (use a video source such as "
                        f"moving-objects or a folder of videos)")
    if frames.dim() != 5 or frames.shape[1] < minimum:
        raise UserError(f"{method}: a video shorter than {needs}: the clips have {frames.shape[1]} frame(s), "
                        f"{needs} needs {minimum}")
    return frames


def check_geometric(aug: AugmentConfig, method: str) -> None:
    """Refuse augmentation options the method would ignore: its views are only cropped and flipped."""
    on = [k for k in PHOTOMETRIC if getattr(aug, k) > 0]
    if on:
        raise UserError(f"{method} only crops and flips its views; set augment {', '.join(on)} to 0")


def shared_params(stack: torch.Tensor, aug: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """One random resized crop (``aug.crop_scale``, ``aug.crop_ratio``) and flip (``aug.flip_p``) per sample of a
    stack ``(B, C, H, W)``: (top, left, h, w, flip) rows (:func:`~selfsup.data.ops.video.sample_shared_crop`) on its
    device, drawn for the global batch (:func:`~selfsup.data.views.for_this_rank`)."""
    b, _, h, w = stack.shape
    return for_this_rank(lambda n: sample_shared_crop(n, h, w, aug.crop_scale, aug.crop_ratio, aug.flip_p,
                                                      generator, stack.device), b)


def shared_view(stack: torch.Tensor, aug: AugmentConfig, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random resized crop and flip per sample of a float stack ``(B, C, H, W)`` (:func:`shared_params`), the
    same for all its channels: ``(B, C, size, size)``."""
    params = shared_params(stack, aug, generator)
    with torch.autocast(stack.device.type, enabled=False):  # exact float32 sampling, also inside a bf16 step
        return shared_crop(stack, params, size)


def photometric(views: torch.Tensor, aug: AugmentConfig, size: int, generator: torch.Generator) -> torch.Tensor:
    """The photometric part of ``aug`` (:data:`PHOTOMETRIC`: colour jitter, grey, blur, solarize) of views already
    cropped and flipped alike with their targets, float [0, 1]: the augmentation with a crop of the whole view and
    no flip, drawn for the global batch."""
    colour = replace(aug, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0)
    return augmented(views, colour, size, generator)


def palette(k: int) -> torch.Tensor:
    """``k`` distinct saturated colours (k, 3) in [0, 1], hues evenly spaced."""
    return torch.tensor([colorsys.hsv_to_rgb(i / k, 0.9, 1.0) for i in range(k)])


def part_labels(batch: int, k: int, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """One-hot labels (B, k * k, H, W) of a ``k`` x ``k`` grid of parts, the same for every sample."""
    row = torch.arange(height, device=device) * k // height
    column = torch.arange(width, device=device) * k // width
    index = (row[:, None] * k + column[None, :]).expand(batch, height, width)
    return F.one_hot(index, k * k).permute(0, 3, 1, 2).float()


def overlay(frames: torch.Tensor, labels: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Float frames (..., 3, H, W) with soft labels (..., K, H, W) painted over them: each pixel blends in the
    palette colour of its most likely label, weighted by that label's probability times ``alpha``."""
    p, index = labels.max(-3)
    colour = palette(labels.shape[-3]).to(frames.device)[index].movedim(-1, -3)
    weight = (alpha * p).unsqueeze(-3)
    return frames * (1 - weight) + colour * weight


def propagated_parts(frames: torch.Tensor, propagate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     grid: int) -> torch.Tensor:
    """Every clip (B, T, 3, H, W) uint8 as one row of frames with a ``grid`` x ``grid`` of parts of frame 0 carried
    over them by ``propagate(frames, labels)`` (labels (B, K, H, W) of frame 0 -> (B, T, K, H, W)) and painted on
    (:func:`overlay`): (B, 3, H', W') in [0, 1]."""
    b, length, _, height, width = frames.shape
    parts = propagate(frames, part_labels(b, grid, height, width, frames.device))
    return mosaic(overlay(frames.float() / 255.0, parts), length)
