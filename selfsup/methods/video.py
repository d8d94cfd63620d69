"""What the methods that learn from clips share (shuffle-learn, motion-segmentation): the batch's ``frames`` field,
checked, and one random crop and flip applied alike to every channel of a stack (a tuple's frames, a frame and its
mask), drawn for the global batch."""

from __future__ import annotations

import torch

from selfsup.data.augment import AugmentConfig
from selfsup.data.ops.video import sample_shared_crop, shared_crop
from selfsup.data.views import for_this_rank
from selfsup.errors import UserError

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


def shared_view(stack: torch.Tensor, aug: AugmentConfig, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random resized crop (``aug.crop_scale``, ``aug.crop_ratio``) and flip (``aug.flip_p``) per sample of a float
    stack ``(B, C, H, W)``, the same for all its channels: ``(B, C, size, size)``; drawn for the global batch
    (:func:`~selfsup.data.views.for_this_rank`)."""
    b, _, h, w = stack.shape
    params = for_this_rank(lambda n: sample_shared_crop(n, h, w, aug.crop_scale, aug.crop_ratio, aug.flip_p,
                                                        generator, stack.device), b)
    with torch.autocast(stack.device.type, enabled=False):  # exact float32 sampling, also inside a bf16 step
        return shared_crop(stack, params, size)
