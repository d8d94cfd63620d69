"""The method protocol: views, backbone, heads, objective, dynamics (docs/methods.md).

A method is an ``nn.Module`` that owns the backbone and its heads. The engine hands it a
:class:`Batch` of uint8 images already on the device; the method makes its views with the batched
ops of :mod:`selfsup.data.augment`, runs backbone and heads, and returns its loss from a pure
function of :mod:`selfsup.losses`. ``after_step`` holds the dynamics (EMA targets, queues, banks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from selfsup.data.augment import AugmentConfig


@dataclass
class Batch:
    """One training batch: uint8 images on the device and what the engine knows about them."""

    images: torch.Tensor  # (B, 3, H, W) uint8
    labels: torch.Tensor | None  # (B,) int64, or None for unlabeled data
    indices: torch.Tensor  # (B,) positions in the training set (for memory banks)
    generator: torch.Generator  # seeds this step's augmentation (same step -> same views)
    progress: float  # fraction of training done, in [0, 1)


class Method(nn.Module):
    """Base class. Subclasses set the class attributes and implement ``training_step``."""

    name: ClassVar[str]
    paper: ClassVar[str]
    needs_labels: ClassVar[bool] = False
    #: under DDP, batch norm over the global batch (off where it would leak, e.g. MoCo's shuffled keys)
    global_bn: ClassVar[bool] = True
    #: defaults the engine uses unless the user overrides them; lr = base_lr * batch_size / 256
    base_lr: ClassVar[float] = 0.12
    weight_decay: ClassVar[float] = 5e-4
    optimizer: ClassVar[str] = "sgd"
    #: the method's own augmentation defaults (AugmentConfig fields); the user's ``augment`` keys win
    augment_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, backbone: nn.Module, feat_dim: int, image_size: int, aug: AugmentConfig | None = None,
                 num_classes: int = 0, num_samples: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.feat_dim = feat_dim
        self.image_size = image_size
        self.aug = aug or AugmentConfig(**self.augment_defaults)
        self.num_classes = num_classes
        self.num_samples = num_samples  # size of the pretraining set (memory banks)

    def on_train_start(self, images: torch.Tensor) -> None:
        """Called once before the first step of a fresh run with the pretraining images (uint8, on the
        device; a lazily decoded stand-in for streamed sets), e.g. to fill a memory bank."""

    def check_batch(self, global_batch: int) -> None:
        """Refuse (with a UserError) a global batch size this method cannot train with, before any step."""

    def training_step(self, batch: Batch) -> torch.Tensor:
        """Return the scalar loss for one batch."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> torch.Tensor:
        """The training step, as ``forward`` so that DistributedDataParallel can wrap the method."""
        return self.training_step(batch)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Update non-gradient state after the optimiser step (``progress`` in [0, 1])."""
