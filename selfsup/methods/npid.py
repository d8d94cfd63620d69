"""NPID: instance discrimination against a memory bank (Wu, Xiong, Yu, Lin, CVPR 2018)."""

from __future__ import annotations

import torch

from selfsup.data.views import augmented
from selfsup.dynamics.bank import sampled_negatives
from selfsup.errors import UserError
from selfsup.losses import info_nce, instance_softmax, nce_loss, nce_normaliser
from selfsup.methods.base import Batch, EpochContext
from selfsup.methods.memory_bank import MemoryBankMethod
from selfsup.methods.panels import Panel


class NPID(MemoryBankMethod):
    """Every training image is its own class: a linear 128-d head, L2-normalised, is classified by a
    non-parametric softmax against a memory bank holding one feature per image, updated with momentum 0.5
    (:class:`~selfsup.methods.memory_bank.MemoryBankMethod`).

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

    def __init__(self, *args, temperature: float = 0.07, negatives: int = 4096, loss: str = "softmax",
                 **kwargs) -> None:
        if loss not in ("softmax", "nce"):
            raise UserError(f"npid loss must be 'softmax' or 'nce' (got {loss!r})")
        super().__init__(*args, **kwargs)
        self.temperature, self.negatives, self.loss = temperature, negatives, loss
        self.normaliser = nce_normaliser(self.num_samples, self.bank.shape[1], temperature) if loss == "nce" else 0.0

    @torch.no_grad()
    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Fill the bank with the initial features before the first step (:meth:`fill_bank`), except for the NCE
        loss, whose constant Z is the paper's estimate against random rows: against a bank of the initial, nearly
        parallel features every noise row would look like a positive and the loss explodes."""
        if self.loss != "nce":
            self.fill_bank(ctx)

    def training_step(self, batch: Batch) -> torch.Tensor:
        features = self.embed(batch)
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
