"""Patches tracked through video are positives (Wang & Gupta, "Unsupervised Learning of Visual Representations
using Videos", ICCV 2015)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from selfsup.data.ops.base import to_float
from selfsup.data.ops.crop import resized_crop
from selfsup.data.ops.video import gather_frames
from selfsup.data.sources import Dataset
from selfsup.data.tracks import patch_boxes, track_clips
from selfsup.data.views import for_this_rank, prepare
from selfsup.errors import UserError
from selfsup.losses import triplet_loss
from selfsup.methods.base import Batch, EpochContext
from selfsup.methods.panels import Panel
from selfsup.methods.triplet import Triplet
from selfsup.methods.video import clip_frames

POSITIVES = ("last", "random")


def outline(images: torch.Tensor, boxes: torch.Tensor, colour: tuple[float, float, float] = (1.0, 0.1, 0.1),
            width: int = 1) -> torch.Tensor:
    """Float images (B, 3, H, W) with the border of each box (top, left, h, w) of ``boxes`` (B, 4) drawn in
    ``colour``, ``width`` px wide, inside the box."""
    height, wide = images.shape[-2:]
    top, left, h, w = (v.view(-1, 1) for v in boxes.to(images.device).unbind(1))
    ys, xs = torch.arange(height, device=images.device), torch.arange(wide, device=images.device)
    in_y, in_x = (ys >= top) & (ys < top + h), (xs >= left) & (xs < left + w)  # (B, H), (B, W)
    edge_y = in_y & ((ys < top + width) | (ys >= top + h - width))
    edge_x = in_x & ((xs < left + width) | (xs >= left + w - width))
    border = (edge_y[:, :, None] & in_x[:, None, :]) | (in_y[:, :, None] & edge_x[:, None, :])
    paint = torch.tensor(colour, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return torch.where(border[:, None], paint, images)


class Tracking(Triplet):
    """Before the first step, every clip's strongest moving corner of the first frame is tracked through its frames
    by pyramidal KLT (:func:`selfsup.data.tracks.track_clips`; once, saved with the model, so a resumed run trains
    on the same tracks; lost tracks fall back to the clip centre, and their share is reported as ``tracks_lost``).
    The step crops a square patch of ``patch`` times the frame's shorter side around the track in the first frame
    (the query) and around the tracked point in the last frame (``positive: last``, the paper's pair) or in a
    random later one (``random``), all 2B patches in one ``grid_sample`` resized to the image size; no further
    augmentation. Loss: the paper's margin ranking on the projected embeddings, ``max(0, D(q, p) - D(q, n) + M)``
    with the cosine distance and M = ``margin`` (0.5), the negatives being other clips' positives (of all ranks):
    random ones for the first ``hard_from`` share of training, then the ``top_k`` most similar of ``candidates``
    random others (0: of the whole batch). By default the paper's mining: ``mining: hard`` with ``hard_from`` 0.1
    and ``top_k`` 4 (it takes the 4 hardest of 100 after its first epochs); ``mining: random`` defaults to one
    random negative throughout (``hard_from`` 0, ``top_k`` 1).
    """

    name = "tracking"
    needs_fields = ("frames",)
    paper = "Wang & Gupta, Unsupervised Learning of Visual Representations using Videos, ICCV 2015"

    def __init__(self, *args, patch: float = 0.5, positive: str = "last", motion_threshold: float = 20.0,
                 mining: str = "hard", hard_from: float | None = None, top_k: int | None = None, **kwargs) -> None:
        hard = mining == "hard"  # the paper's mining unless said otherwise: random first, then the 4 hardest
        super().__init__(*args, mining=mining, hard_from=(0.1 if hard else 0.0) if hard_from is None else hard_from,
                         top_k=(4 if hard else 1) if top_k is None else top_k, **kwargs)
        if positive not in POSITIVES or not 0.0 < patch <= 1.0 or motion_threshold < 0:
            raise UserError(f"tracking: positive must be one of {', '.join(POSITIVES)}, patch in (0, 1] and "
                            "motion_threshold >= 0")
        self.patch, self.positive, self.motion_threshold = patch, positive, motion_threshold
        n = max(self.num_samples, 1)
        self.register_buffer("tracks", torch.zeros(n, 0, 2))  # (N, T, 2) xy, sized by the clips before step 1
        self.register_buffer("valid", torch.zeros(n, dtype=torch.bool))
        self.register_load_state_dict_pre_hook(self._adopt_clip_length)

    def _adopt_clip_length(self, module: Any, state: dict[str, torch.Tensor], prefix: str, *args: Any) -> None:
        """A checkpoint's tracks carry the clips' length T: the empty buffer takes its shape before loading."""
        saved = state.get(prefix + "tracks")
        if saved is not None:
            self.tracks = torch.empty(saved.shape, dtype=self.tracks.dtype, device=self.tracks.device)

    @torch.no_grad()
    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Once (not after a resume: the tracks are part of the model): the tracks of every clip, on rank 0."""
        if self.tracks.shape[1] > 0:
            return
        frames = clip_frames(ctx.fields, self.name, 2, "a track")
        if len(frames) != len(self.valid):
            raise UserError(f"tracking: {len(frames)} clips, but the method was built for {len(self.valid)}")
        tracks, valid = ctx.on_main(lambda: track_clips(frames, self.motion_threshold))
        self.tracks = tracks.to(self.valid.device)
        self.valid.copy_(valid)

    def _patches(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The queries and then the positives (2B, 3, S, S) float [0, 1], the frames they were cut from (first
        frame, positive's frame: (B, 2, 3, H, W) uint8), the positive's frame index (B,) and the 2B boxes (top,
        left, h, w)."""
        frames = clip_frames(batch.fields, self.name, 2, "a track")
        b, length, _, height, width = frames.shape
        if self.tracks.shape[1] != length:
            raise UserError(f"tracking: clips of {length} frames, tracked with {self.tracks.shape[1]}")
        if self.positive == "last":
            later = torch.full((b,), length - 1, device=frames.device)
        else:
            g = batch.generator
            later = for_this_rank(lambda n: torch.randint(1, length, (n,), generator=g, device=g.device), b)
            later = later.to(frames.device)
        index = torch.stack([torch.zeros_like(later), later], 1)  # (B, 2): first frame, positive's frame
        points = self.tracks[batch.indices].gather(1, index[:, :, None].expand(-1, -1, 2))  # (B, 2, 2) xy
        side = max(1, round(self.patch * min(height, width)))
        boxes = patch_boxes(points.transpose(0, 1).flatten(0, 1), side, height, width)
        pair = gather_frames(frames, index)
        patches = resized_crop(to_float(pair.transpose(0, 1).flatten(0, 1)), boxes, self.image_size)
        return patches, pair, later, boxes

    def training_step(self, batch: Batch) -> torch.Tensor:
        q, p = self.projector(self.backbone(prepare(self._patches(batch)[0]))).chunk(2)
        if self.mining == "random" or batch.progress < self.hard_from:
            return triplet_loss(q, p, self.margin, "random", batch.generator)
        return triplet_loss(q, p, self.margin, "hard", batch.generator, self.candidates, self.top_k)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        patches, pair, later, boxes = self._patches(batch)
        query, positive = patches.chunk(2)
        box_q, box_p = boxes.chunk(2)
        lost = (~self.valid[batch.indices]).tolist()
        moved = (box_p[:, :2] - box_q[:, :2]).tolist()
        return [Panel("the first frame and the query's box (around the track's start; lost tracks: the centre)",
                      outline(to_float(pair[:, 0]), box_q), ["lost: centre" if x else "" for x in lost]),
                Panel("the positive's frame and box (around the tracked point), and how far the box moved",
                      outline(to_float(pair[:, 1]), box_p),
                      [f"frame {t}: {dx:+.0f}, {dy:+.0f} px" for t, (dy, dx) in
                       zip(later.tolist(), moved, strict=True)]),
                Panel("what the network sees: the query patches", query),
                Panel("their positives (the negatives: other clips' positives)", positive)]

    def report(self, out: Path, data: Dataset) -> dict[str, float]:
        return {"tracks_lost": float((~self.valid).float().mean())}
