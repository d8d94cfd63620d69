"""Segment what moves from a single frame (Pathak, Girshick, Dollár, Darrell, Hariharan, "Learning Features by
Watching Objects Move", CVPR 2017): the targets are masks of the moving pixels, found in the clip without labels."""

from __future__ import annotations

import torch

from selfsup.backbones import feature_map
from selfsup.data.ops.base import resize, to_float
from selfsup.data.ops.video import motion_masks
from selfsup.data.views import prepare
from selfsup.errors import UserError
from selfsup.losses.segmentation import foreground_bce
from selfsup.methods.base import Batch, Method
from selfsup.methods.panels import Panel
from selfsup.methods.reconstruction import pixel_decoder
from selfsup.methods.video import check_geometric, clip_frames, shared_view


def moving_share(masks: torch.Tensor) -> list[str]:
    """Every mask's share of moving pixels, as a caption."""
    return [f"{v:.0%} moving" for v in masks.float().flatten(1).mean(1).tolist()]


class MotionSegmentation(Method):
    """The target of every clip (the ``frames`` field, T >= 3) is the mask of the moving pixels of its middle frame
    ``T // 2`` (:func:`~selfsup.data.ops.video.motion_masks`): where the frame differs from the clip's still background
    (its per-pixel temporal median, or the nearer of its first and last frames) by more than ``max(min_difference,
    threshold * the clip's largest difference)``, closed by a ``kernel`` x ``kernel`` max/min pooling. The paper
    segments the motion with NLC (non-local consensus) on optical flow, which also copes with a moving camera; this
    frame-difference substitute assumes a still camera. The network sees only the middle frame, cropped and flipped;
    the mask gets the same crop and flip (one op over the frame and its mask stacked) and is binarised at 1/2. A pixel
    decoder on the backbone's last feature map predicts a foreground logit per pixel; the loss is the binary
    cross-entropy, with foreground and background weighing half each per image where ``balanced`` (the paper's
    class-balanced loss: moving pixels are few). ``outputs.png`` shows the predicted foreground probability of the
    test frames (and the target, given their clips).
    """

    name = "motion-segmentation"
    needs_fields = ("frames",)
    paper = "Pathak, Girshick, Dollár, Darrell, Hariharan, Learning Features by Watching Objects Move, CVPR 2017"
    augment_defaults = {"crop_scale": (0.5, 1.0), "jitter_p": 0.0, "gray_p": 0.0}

    def __init__(self, *args, threshold: float = 0.3, min_difference: float = 0.05, kernel: int = 3,
                 balanced: bool = True, decoder_dim: int = 256, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 <= threshold < 1.0 or not 0.0 <= min_difference < 1.0:
            raise UserError(f"motion-segmentation: threshold and min_difference must lie in [0, 1), got {threshold} "
                            f"and {min_difference}")
        if kernel < 1 or kernel % 2 == 0 or decoder_dim < 1:
            raise UserError(f"motion-segmentation: kernel must be odd and positive and decoder_dim positive, got "
                            f"{kernel} and {decoder_dim}")
        check_geometric(self.aug, self.name)
        self.threshold, self.min_difference, self.kernel, self.balanced = threshold, min_difference, kernel, balanced
        self.decoder = pixel_decoder(self.backbone, self.in_channels, self.image_size, 1, decoder_dim)

    def masks(self, frames: torch.Tensor) -> torch.Tensor:
        """The moving pixels ``(B, 1, H, W)`` of the middle frame of every clip."""
        return motion_masks(frames, frames.shape[1] // 2, self.threshold, self.min_difference, self.kernel)

    def pair(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's input (the middle frames, cropped and flipped, float [0, 1]) and its 0/1 target mask."""
        frames = clip_frames(batch.fields, self.name, 3, "the background estimate")
        stack = torch.cat([to_float(frames[:, frames.shape[1] // 2]), self.masks(frames)], 1)
        view = shared_view(stack, self.aug, self.image_size, batch.generator)
        return view[:, :3], (view[:, 3:] >= 0.5).float()

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """The foreground logits ``(B, 1, size, size)`` of [0, 1] images ``x``."""
        return self.decoder(feature_map(self.backbone, prepare(x)), self.image_size)

    def training_step(self, batch: Batch) -> torch.Tensor:
        x, target = self.pair(batch)
        return foreground_bce(self.segment(x), target, self.balanced)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        x, target = self.pair(batch)
        return [Panel("what the network sees: the middle frame (cropped, flipped)", x),
                Panel("what it must predict: its moving pixels (the same crop and flip)", target,
                      moving_share(target))]

    @torch.no_grad()
    def outputs(self, images: torch.Tensor, generator: torch.Generator,
                fields: dict[str, torch.Tensor] | None = None) -> list[Panel]:
        """Rows of ``outputs.png`` under the test frames: the target mask where their clips are given (``fields``
        with ``frames``), and the predicted foreground probability."""
        size = self.image_size
        rows = []
        if fields and "frames" in fields:
            target = (resize(self.masks(fields["frames"]), size) >= 0.5).float()
            rows.append(Panel("the target: the moving pixels", target, moving_share(target)))
        predicted = torch.sigmoid(self.segment(resize(images, size)).float())
        return [*rows, Panel("the predicted foreground probability", predicted, moving_share(predicted >= 0.5))]
