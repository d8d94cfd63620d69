"""Shuffle and Learn: is a tuple of three frames of a clip in temporal order? (Misra, Zitnick, Hebert, "Shuffle and
Learn: Unsupervised Learning using Temporal Order Verification", ECCV 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.data.ops.base import to_float
from selfsup.data.ops.video import frame_motion, gather_frames, order_tuples, sample_tuple_draws
from selfsup.data.views import for_this_rank, prepare
from selfsup.errors import UserError
from selfsup.heads.tiles import ConcatHead
from selfsup.methods.base import Batch, Method
from selfsup.methods.panels import Panel, mosaic
from selfsup.methods.video import check_geometric, clip_frames, shared_view


class ShuffleLearn(Method):
    """From every clip (the ``frames`` field, T >= 3 frames) a tuple of three frames: a window of the clip drawn with
    probability proportional to how much it moves (the mean absolute difference of its consecutive frames, the
    stand-in for the paper's mean optical-flow magnitude), a frame strictly inside it, and with probability
    ``positive_fraction`` the three in temporal order, else a negative that keeps two of them as its ends and puts
    the third, outside them, in the middle (the paper's ``(b, a, d)`` and ``(b, e, d)``); every tuple is reversed
    with probability 1/2, as the paper counts the reversed order as positive too
    (:func:`~selfsup.data.ops.video.order_tuples`). The draws are made for the global batch. The tuple's frames share
    one random crop and flip; the backbone runs once over all B x 3 frames, each frame's features go through a
    shared ``frame_dim`` layer (the paper's fc7), and an MLP on their concatenation (its fc8) gives the logit of
    "in order", trained with the binary cross-entropy. The paper's batches hold more negatives than positives (each
    five-frame window gives one positive and two negatives); here half and half by default.
    """

    name = "shuffle-learn"
    needs_fields = ("frames",)
    paper = ("Misra, Zitnick, Hebert, Shuffle and Learn: Unsupervised Learning using Temporal Order Verification, "
             "ECCV 2016")
    augment_defaults = {"crop_scale": (0.5, 1.0), "jitter_p": 0.0, "gray_p": 0.0}

    def __init__(self, *args, positive_fraction: float = 0.5, frame_dim: int = 512, head_hidden_dim: int = 512,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 < positive_fraction < 1.0:
            raise UserError(f"shuffle-learn: positive_fraction must lie in (0, 1), got {positive_fraction}")
        check_geometric(self.aug, self.name)
        self.positive_fraction = positive_fraction
        self.head = ConcatHead(3, self.feat_dim, head_hidden_dim, 1, frame_dim)

    def tuples(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The network's input: every clip's tuple ``(B, 3, 3, size, size)`` float [0, 1] in the order it is shown,
        the tuple's frame indices ``(B, 3)`` and whether they are in temporal order ``(B,)``. Draws, in order: the
        tuples, then the crops, each for the global batch."""
        frames = clip_frames(batch.fields, self.name, 3, "a tuple")
        b, size = len(frames), self.image_size
        draws = for_this_rank(lambda n: sample_tuple_draws(n, batch.generator, frames.device), b)
        index, positive = order_tuples(frame_motion(frames), draws, self.positive_fraction)
        stack = to_float(gather_frames(frames, index).flatten(1, 2))  # (B, 9, H, W): one crop for the three
        return shared_view(stack, self.aug, size, batch.generator).view(b, 3, 3, size, size), index, positive

    def training_step(self, batch: Batch) -> torch.Tensor:
        x, _, positive = self.tuples(batch)
        logits = self.head(self.backbone(prepare(x.flatten(0, 1)))).squeeze(1)
        return F.binary_cross_entropy_with_logits(logits.float(), positive.float())

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        x, index, positive = self.tuples(batch)
        captions = [f"{'in order' if p else 'shuffled'}: frames {', '.join(map(str, i))}"
                    for p, i in zip(positive.tolist(), index.tolist(), strict=True)]
        order = index.argsort(1)
        in_time = x.gather(1, order.view(*order.shape, 1, 1, 1).expand_as(x))
        return [Panel("what the network sees: a tuple of 3 frames (one crop and flip), in order or not", mosaic(x, 3),
                      captions),
                Panel("the same frames in temporal order", mosaic(in_time, 3),
                      [f"frames {', '.join(map(str, i))}" for i in index.sort(1).values.tolist()])]
