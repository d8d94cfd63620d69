"""What the memory-bank methods share (NPID, AND): a linear head whose L2-normalised output is classified against a
bank of one feature per training image, updated with momentum after every step (Wu, Xiong, Yu, Lin, "Unsupervised
Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018, section 3.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.views import augmented_views, eval_view
from selfsup.distributed import gather
from selfsup.dynamics.bank import PendingRows
from selfsup.errors import UserError
from selfsup.methods.base import Batch, EpochContext, Method


class MemoryBankMethod(Method):
    """Base class: ``proj_dim`` is the head's width (and the bank's), ``bank_momentum`` the share of a row's old value
    an update keeps (NPID's 0.5). Subclasses classify :meth:`embed`'s features against ``bank``."""

    def __init__(self, *args, proj_dim: int = 128, bank_momentum: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.num_samples <= 0:
            raise UserError(f"{self.name} keeps one memory row per training image and needs the dataset size "
                            "(num_samples)")
        self.bank_momentum = bank_momentum
        self.head = nn.Linear(self.feat_dim, proj_dim)
        self.register_buffer("bank", F.normalize(torch.randn(self.num_samples, proj_dim), dim=1))
        self._pending = PendingRows()

    @torch.no_grad()
    def fill_bank(self, ctx: EpochContext) -> None:
        """Before the first step, fill the bank with every image's feature under the initial weights (un-augmented,
        batch norm in training mode over the global batch, its running statistics left as they are) instead of
        random unit vectors, so that the positives mean something from the first step; the paper's random rows
        are only replaced one epoch later, which costs a short run everything (below random-init kNN at 5
        CIFAR-10 epochs). Streamed sets keep the random rows (a full decoding pass would cost an epoch)."""
        if ctx.epoch > 0 or ctx.streamed:
            return
        rows = ctx.extract(lambda x: F.normalize(self.head(self.backbone(eval_view(x, self.image_size))).float(),
                                                 dim=1), batch_size=512, sharded=False)
        self.bank.copy_(rows.to(self.bank.device))

    def embed(self, batch: Batch) -> torch.Tensor:
        """The head's output (not normalised) for one augmented view of every image; the features of all ranks are
        held to be written into their bank rows after the optimiser's step."""
        x = augmented_views(batch.images, self.aug, self.image_size, batch.generator, n=1)
        features = self.head(self.backbone(x))
        self._pending.hold(gather(batch.indices), gather(features.detach().float()))
        return features

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Write the step's features (of all ranks) into their bank rows."""
        self._pending.write(self.bank, self.bank_momentum)
