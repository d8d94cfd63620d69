"""MoCo v1/v2: contrast queries with a queue of keys from a momentum encoder (He et al., CVPR 2020;
Chen, Fan, Girshick, He, "Improved Baselines with Momentum Contrastive Learning", 2020)."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.views import augmented_views
from selfsup.distributed import gather, is_distributed
from selfsup.dynamics.batchnorm import SplitBatchNorm2d, batch_shuffle, batch_unshuffle
from selfsup.dynamics.ema import ema_update
from selfsup.dynamics.queue import enqueue
from selfsup.errors import UserError
from selfsup.heads import MLP
from selfsup.losses import info_nce
from selfsup.methods.base import Batch, Method


class MoCo(Method):
    """Query encoder = backbone + projector; key encoder = their EMA copy (momentum ``momentum``). Each
    query's positive is the key of the other view of its image, its negatives the queue of the last
    ``queue_size`` keys; the newest keys (of all ranks) replace the oldest after every step.

    ``version`` 1: linear 128-d head, T = 0.07; ``version`` 2 (default): MLP head, T = 0.2, plus Gaussian
    blur (p = 0.5) when images are at least 64 px (``blur``). ``symmetric``: also use view 2 as query and
    view 1 as key (both keys are enqueued). Batch norm cannot leak: keys are computed on a batch shuffled
    across ranks (:func:`batch_shuffle`), and in a single process both encoders normalise in ``bn_splits``
    sub-batches (:class:`SplitBatchNorm2d`), as ``bn_splits`` GPUs would. Each encoder runs once per step:
    with ``symmetric`` it encodes both views in one batch whose split batch norm keeps every view's
    sub-batches apart, as two passes would (half the kernel launches).
    """

    name = "moco"
    paper = "He et al., Momentum Contrast for Unsupervised Visual Representation Learning, CVPR 2020; " \
            "Chen et al., Improved Baselines with Momentum Contrastive Learning (v2), 2020"
    base_lr = 0.06
    global_bn = False  # shuffled per-rank BN on the key encoder is what stops the cheating

    def __init__(self, *args, version: int = 2, temperature: float | None = None, momentum: float = 0.999,
                 queue_size: int = 4096, proj_dim: int = 128, proj_hidden_dim: int | None = None,
                 symmetric: bool = False, bn_splits: int = 8, blur: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if version not in (1, 2):
            raise UserError(f"moco: version must be 1 or 2 (got {version})")
        self.version, self.momentum, self.symmetric = version, momentum, symmetric
        self.temperature = temperature if temperature is not None else (0.07 if version == 1 else 0.2)
        if version == 1:
            self.projector: nn.Module = nn.Linear(self.feat_dim, proj_dim)
        else:
            self.projector = MLP(self.feat_dim, proj_hidden_dim or self.feat_dim, proj_dim, hidden_bn=False)
        if version == 2 and blur and self.image_size >= 64 and self.aug.blur_p == 0:
            self.aug = replace(self.aug, blur_p=0.5)
        self.bn_splits = 1 if is_distributed() else bn_splits  # under DDP each rank is one BN group
        views_per_pass = 2 if symmetric else 1  # batch norm never mixes the two views of a pass
        if self.bn_splits * views_per_pass > 1:
            self.backbone = SplitBatchNorm2d.convert(self.backbone, self.bn_splits * views_per_pass)
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        for bn in self.key_backbone.modules():  # its BN statistics are the query encoder's, copied every step
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                bn.track_running_stats = False
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._keys: torch.Tensor | None = None

    def check_batch(self, global_batch: int) -> None:
        if global_batch % self.bn_splits:
            raise UserError(f"moco: a batch of {global_batch} does not split into bn_splits={self.bn_splits} equal "
                            "batch-norm groups; use a batch size divisible by it (or change bn_splits)")
        per_step = global_batch * (2 if self.symmetric else 1)
        if self.queue.shape[0] % per_step:
            raise UserError(f"moco: the queue size {self.queue.shape[0]} must be divisible by the number of keys "
                            f"enqueued per step ({per_step} = the global batch"
                            f"{', twice that with symmetric=true' if self.symmetric else ''}); change queue_size")

    @torch.no_grad()
    def _keys_of(self, views: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        """Normalised keys of each view, from one key-encoder pass; each view is shuffled on its own."""
        shuffled = [batch_shuffle(x, generator) for x in views]
        k = F.normalize(self.key_projector(self.key_backbone(torch.cat([x for x, _ in shuffled]))).float(), dim=1)
        return [batch_unshuffle(part, unshuffle) for part, (_, unshuffle) in zip(k.chunk(len(views)), shuffled)]

    def training_step(self, batch: Batch) -> torch.Tensor:
        x = augmented_views(batch.images, self.aug, self.image_size, batch.generator)
        x1, x2 = x.chunk(2)
        keys = self._keys_of([x2, x1] if self.symmetric else [x2], batch.generator)
        queries = self.projector(self.backbone(x if self.symmetric else x1)).chunk(len(keys))
        losses = [info_nce(q, k, self.queue, self.temperature) for q, k in zip(queries, keys)]
        self._keys = gather(torch.cat(keys))
        return torch.stack(losses).sum()

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Momentum update of the key encoder, then enqueue this step's keys (dequeueing the oldest)."""
        ema_update(self.key_backbone, self.backbone, self.momentum)
        ema_update(self.key_projector, self.projector, self.momentum)
        if self._keys is not None:
            enqueue(self.queue, self.queue_ptr, self._keys)
            self._keys = None
