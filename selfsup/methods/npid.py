"""NPID: instance discrimination against a memory bank (Wu, Xiong, Yu, Lin, CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.views import augmented, augmented_views, eval_view
from selfsup.distributed import gather
from selfsup.dynamics.bank import PendingRows, sampled_negatives
from selfsup.errors import UserError
from selfsup.losses import info_nce, instance_softmax, nce_loss, nce_normaliser
from selfsup.methods.base import Batch, EpochContext, Method
from selfsup.methods.panels import Panel


class NPID(Method):
    """Every training image is its own class: a linear 128-d head, L2-normalised, is classified by a
    non-parametric softmax against a memory bank holding one feature per image, updated with momentum 0.5.

    ``negatives``: how many bank rows (drawn uniformly, with replacement, shared by the batch) the loss
    runs over besides each sample's own row; 0, or at least the dataset size, uses the whole bank.
    ``loss``: ``"softmax"``, the non-parametric softmax (eq. 2; over the sampled rows it is InfoNCE), or
    ``"nce"``, the paper's noise-contrastive estimate of it (eqs. 3-6) with a constant normaliser Z.
    """

    name = "npid"
    paper = "Wu et al., Unsupervised Feature Learning via Non-Parametric Instance Discrimination, CVPR 2018"
    #: the paper's 0.03 (ResNet-50, ImageNet) is too high for the small convnet at T = 0.07: on digits its kNN
    #: falls below random init within 150 steps; 0.01 beats it (the recipes set 0.03 for ResNets)
    base_lr = 0.01

    def __init__(self, *args, temperature: float = 0.07, proj_dim: int = 128, negatives: int = 4096,
                 bank_momentum: float = 0.5, loss: str = "softmax", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if loss not in ("softmax", "nce"):
            raise UserError(f"npid loss must be 'softmax' or 'nce' (got {loss!r})")
        if self.num_samples <= 0:
            raise UserError("npid keeps one memory row per training image and needs the dataset size "
                            "(num_samples)")
        self.temperature, self.negatives, self.bank_momentum = temperature, negatives, bank_momentum
        self.loss = loss
        self.normaliser = nce_normaliser(self.num_samples, proj_dim, temperature) if loss == "nce" else 0.0
        self.head = nn.Linear(self.feat_dim, proj_dim)
        self.register_buffer("bank", F.normalize(torch.randn(self.num_samples, proj_dim), dim=1))
        self._pending = PendingRows()

    @torch.no_grad()
    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Before the first step, fill the bank with every image's feature under the initial weights (un-augmented,
        batch norm in training mode over the global batch, its running statistics left as they are) instead of
        random unit vectors, so that the positives mean something from the first step; the paper's random rows
        are only replaced one epoch later, which costs a short run everything (below random-init kNN at 5
        CIFAR-10 epochs). Streamed sets keep the random rows (a full decoding pass would cost an epoch), and so
        does the NCE loss, whose constant Z is the paper's estimate against random rows: against a bank of the
        initial, nearly parallel features every noise row would look like a positive and the loss explodes."""
        if ctx.epoch > 0 or ctx.streamed or self.loss == "nce":
            return
        rows = ctx.extract(lambda x: F.normalize(self.head(self.backbone(eval_view(x, self.image_size))).float(),
                                                 dim=1), batch_size=512, sharded=False)
        self.bank.copy_(rows.to(self.bank.device))

    def training_step(self, batch: Batch) -> torch.Tensor:
        x = augmented_views(batch.images, self.aug, self.image_size, batch.generator, n=1)
        features = self.head(self.backbone(x))
        self._pending.hold(gather(batch.indices), gather(features.detach().float()))
        noise = sampled_negatives(self.bank, self.negatives, batch.generator)
        if noise is None and self.loss == "softmax":
            return instance_softmax(features, self.bank, batch.indices, self.temperature)
        noise = self.bank if noise is None else noise
        if self.loss == "nce":
            return nce_loss(features, self.bank[batch.indices], noise, self.num_samples, self.normaliser,
                            self.temperature)
        return info_nce(features, self.bank[batch.indices], noise, self.temperature)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        x = augmented(batch.images, self.aug, self.image_size, batch.generator)
        return [Panel("the view: its class is its own index (its memory bank row)", x,
                      [f"instance {i}" for i in batch.indices.tolist()])]

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Write the step's features (of all ranks) into their bank rows."""
        self._pending.write(self.bank, self.bank_momentum)
