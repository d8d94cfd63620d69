"""Tracking emerges by colourising videos (Vondrick, Shrivastava, Fathi, Guadarrama, Murphy, ECCV 2018): a grey
target frame is coloured by pointing at the positions of a grey reference frame and copying their colours."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones import dummy_pass, eval_mode, feature_map
from selfsup.backbones.inputs import InputEncoder, Lightness, scale_lab
from selfsup.data.ops.base import resize
from selfsup.data.ops.lab import lab_to_rgb, rgb_to_lab
from selfsup.data.ops.video import gather_frames
from selfsup.data.views import device_layout, for_this_rank
from selfsup.dynamics.kmeans import nearest_centroid_map, subset_kmeans
from selfsup.errors import UserError
from selfsup.losses.pointer import pointer_colour_loss, pointer_copy, propagate_labels
from selfsup.methods.base import Batch, EpochContext, Method
from selfsup.methods.panels import Panel
from selfsup.methods.video import clip_frames, propagated_parts

MAX_COLOUR_POINTS = 1 << 16  # ab values k-means clusters (a seeded random subset of the training set's)
GRID = 4  # views / outputs: frame 0 cut into GRID x GRID labelled parts, propagated through the clip
OUTPUT_FRAMES = 4  # outputs: the pseudo-clip of each test image


class ColorTracking(Method):
    """The trunk sees the lightness L (Lab, scaled to [-1, 1]) of a reference frame and a target frame ``gap``
    frames later in the same clip (the reference drawn uniformly per clip); a 1x1 convolution maps its last feature
    map to ``embed_dim`` (the paper's 64) dimensions. Each target position points at the reference positions with
    the softmax of the dot products at ``temperature`` (the paper's 1); the loss is the cross-entropy of the copied
    distribution over the reference's quantised colours against the target's own colour, at the feature map's
    resolution (:func:`~selfsup.losses.pointer.pointer_colour_loss`). The colours are the paper's ``num_colours``
    (16) k-means clusters of ab, here of the training clips' middle frames at that resolution, fitted on rank 0
    before the first step (from at most 65,536 values, a seeded subset) and saved with the model. One reference
    frame (the paper uses three); no augmentation. :meth:`propagate` carries labels (masks, keypoint discs) of a
    clip's first frame through it with the same pointer, shown in ``views`` and ``outputs.png`` for a grid of
    parts. The evaluated encoder is the trunk on L.
    """

    name = "color-tracking"
    needs_fields = ("frames",)
    paper = "Vondrick, Shrivastava, Fathi, Guadarrama, Murphy, Tracking Emerges by Colorizing Videos, ECCV 2018"
    in_channels = 1
    #: the paper's Adam at 1e-3 for batches of 32 clips, scaled linearly (lr = base_lr * batch / 256)
    optimizer, base_lr, weight_decay = "adam", 8e-3, 0.0

    def __init__(self, *args, num_colours: int = 16, embed_dim: int = 64, gap: int = 1, temperature: float = 1.0,
                 kmeans_iters: int = 20, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if num_colours < 2 or embed_dim < 1 or gap < 1 or temperature <= 0 or kmeans_iters < 1:
            raise UserError("color-tracking: num_colours must be >= 2, embed_dim, gap and kmeans_iters >= 1, "
                            "temperature > 0")
        self.gap, self.temperature, self.kmeans_iters = gap, temperature, kmeans_iters
        _, channels, _, self.map_size = dummy_pass(self.backbone, 1, self.image_size, feature_map).shape  # last map
        self.embed = nn.Conv2d(channels, embed_dim, 1)
        self.register_buffer("colours", torch.zeros(num_colours, 2))  # ab centres, fitted before the first step

    def _lab(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 frames -> the trunk's input (L in [-1, 1] at the image size) and ab at the feature map's size."""
        lab = rgb_to_lab(resize(rgb, self.image_size))
        return scale_lab(lab)[0], F.interpolate(lab[:, 1:], size=self.map_size, mode="area")

    def _embed(self, lightness: torch.Tensor) -> torch.Tensor:
        return self.embed(feature_map(self.backbone, device_layout(lightness)))

    @torch.no_grad()
    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Before the first step: the colour clusters, k-means of the training images' ab on rank 0."""
        if ctx.epoch > 0:
            return
        ab = ctx.extract(lambda x: self._lab(x)[1].flatten(2).transpose(1, 2).flatten(1)).view(-1, 2)
        if len(ab) < len(self.colours):
            raise UserError(f"color-tracking: {len(ab)} colour values cannot make {len(self.colours)} clusters")
        seed = int(torch.randint(2**62, (), generator=ctx.generator))  # drawn on every rank: they stay in step
        k = len(self.colours)
        self.colours.copy_(ctx.on_main(lambda: subset_kmeans(ab, k, self.kmeans_iters, seed, MAX_COLOUR_POINTS)))

    def _inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The L of the reference frames then of the target frames (2B, 1, S, S), their ab at the feature map's size
        (2B, 2, h, w) and each reference's frame index (B,)."""
        frames = clip_frames(batch.fields, self.name, self.gap + 1, f"a frame pair {self.gap} apart")
        (b, length), g = frames.shape[:2], batch.generator
        first = for_this_rank(lambda n: torch.randint(0, length - self.gap, (n,), generator=g, device=g.device), b)
        pair = gather_frames(frames, torch.stack([first, first + self.gap], 1).to(frames.device))
        return *self._lab(pair.transpose(0, 1).flatten(0, 1)), first

    def training_step(self, batch: Batch) -> torch.Tensor:
        lightness, ab, _ = self._inputs(batch)
        reference, target = self._embed(lightness).chunk(2)
        colours = nearest_centroid_map(ab, self.colours).chunk(2)  # of the references, of the targets
        return pointer_colour_loss(reference, target, *colours, self.temperature)

    def _show(self, lightness: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        """RGB [0, 1] of the network's L inputs (N, 1, S, S) with ab maps (N, 2, h, w), upsampled to S."""
        ab = F.interpolate(ab.float(), size=lightness.shape[-2:], mode="nearest")
        return lab_to_rgb(torch.cat([lightness.float() * 50.0 + 50.0, ab], 1))

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        lightness, ab, first = self._inputs(batch)
        reference, target = self._embed(lightness).float().chunk(2)
        index = nearest_centroid_map(ab, self.colours)  # of the references, then of the targets
        copied = pointer_copy(reference, target, F.one_hot(index.chunk(2)[0], len(self.colours)).permute(0, 3, 1, 2),
                              self.temperature)  # (B, Q, h, w)
        right = (copied.argmax(1) == index.chunk(2)[1]).float().flatten(1).mean(1).tolist()
        (ref_l, tgt_l), (ref_q, tgt_q) = lightness.chunk(2), self.colours[index].permute(0, 3, 1, 2).chunk(2)
        return [Panel("what the network sees: the reference frame's L", (ref_l + 1.0) / 2.0,
                      [f"frame {f}" for f in first.tolist()]),
                Panel("and the target frame's L", (tgt_l + 1.0) / 2.0,
                      [f"frame {f + self.gap}" for f in first.tolist()]),
                Panel(f"the reference's colours it may copy ({len(self.colours)} k-means clusters of ab)",
                      self._show(ref_l, ref_q)),
                Panel("what it must predict: the target's quantised colours", self._show(tgt_l, tgt_q)),
                Panel("its copy: the pointer's expected colour",
                      self._show(tgt_l, torch.einsum("bqhw,qc->bchw", copied, self.colours)),
                      [f"{r:.0%} right" for r in right]),
                Panel(f"the clip, a {GRID} x {GRID} grid of parts of frame 0 propagated by the pointer",
                      propagated_parts(batch.fields["frames"], self.propagate, GRID))]

    @torch.no_grad()
    def outputs(self, images: torch.Tensor, generator: torch.Generator,
                fields: dict[str, torch.Tensor] | None = None) -> list[Panel]:
        """The test clips (without them: each test image rolled by an eighth of its size per frame, wrapping round)
        with a grid of parts of frame 0 propagated, and their last frame coloured by copying frame 0's ab."""
        step, clips = max(1, images.shape[-1] // 8), (fields or {}).get("frames")
        frames = clips if clips is not None else torch.stack(
            [images.roll((t * step, t * step), (-2, -1)) for t in range(OUTPUT_FRAMES)], 1)
        lightness, ab = self._lab(torch.cat([frames[:, 0], frames[:, -1]]))
        reference, target = self._embed(lightness).float().chunk(2)
        copied = pointer_copy(reference, target, ab.chunk(2)[0], self.temperature)
        what = "the clip" if clips is not None else f"a synthetic clip (shifted {step} px per frame)"
        return [Panel(f"{what}, a {GRID} x {GRID} grid of parts propagated",
                      propagated_parts(frames, self.propagate, GRID)),
                Panel("its last frame coloured by copying the first frame's colours",
                      self._show(lightness.chunk(2)[1], copied))]

    def encoder(self) -> nn.Module:
        return InputEncoder(Lightness(), self.backbone)

    @torch.no_grad()
    def propagate(self, frames: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Labels (B, K, H, W) of the first frame of clips ``frames`` uint8 (B, T, 3, H, W) carried through them by
        the pointer of the embeddings (:func:`~selfsup.losses.pointer.propagate_labels`): (B, T, K, H, W). Runs the
        trunk in eval mode (its batch-norm statistics are left alone)."""
        with eval_mode(self):
            feats = self._embed(self._lab(frames.flatten(0, 1))[0]).float().unflatten(0, frames.shape[:2])
        return propagate_labels(feats, labels, self.temperature)

