"""The method protocol: views, backbone, heads, objective, dynamics (docs/methods.md).

A method is an ``nn.Module`` that owns the backbone and its heads. The engine hands it a :class:`Batch` of
uint8 images already on the device; the method makes its views with the batched ops of
:mod:`selfsup.data.ops`, runs backbone and heads, and returns its loss (or a dict of named loss terms, whose
sum is minimised) from pure functions of :mod:`selfsup.losses`. What else a method may declare:

- **optimisers** (:attr:`Method.optimizer_defaults`, :meth:`Method.parameters_of`): one by default (SGD/LARS
  over every parameter); several for adversarial methods, each with its own settings and schedule;
- **phases** (:attr:`Method.phases`): the optimisers a step runs, in order, one forward/backward/step each
  (a GAN: the discriminator ``n_dis`` times, then the generator); ``batch.phase`` says which is running;
- **dynamics**: ``after_step`` after every step (EMA targets, queues, banks), ``on_epoch_start(ctx)`` at the
  start of every epoch, also after a resume (re-clustering, filling a bank; see :class:`EpochContext`);
- **the encoder that is evaluated** (:meth:`Method.encoder`): the backbone on RGB by default;
- **what ``selfsup views`` shows** (:meth:`Method.views`): the network's inputs and targets for a few images;
- **what it makes of fixed test images** (:meth:`Method.outputs`): ``outputs.png``, redrawn at every checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from selfsup.data.augment import AugmentConfig
from selfsup.data.sources import Dataset
from selfsup.data.views import augmented
from selfsup.methods.panels import Panel

#: the settings an optimiser may take (selfsup.engine.optim resolves them; the config may override each)
OPTIMIZER_KEYS = ("optimizer", "lr", "weight_decay", "momentum", "betas", "lars_eta", "lars_clip",
                  "norm_bias_lr_scale", "schedule", "warmup_epochs")


@dataclass
class Batch:
    """One training batch: uint8 images on the device and what the engine knows about them."""

    images: torch.Tensor  # (B, 3, H, W) uint8
    labels: torch.Tensor | None  # (B,) int64, or None for unlabeled data
    indices: torch.Tensor  # (B,) positions in the training set (for memory banks)
    generator: torch.Generator  # seeds this step's augmentation (same step -> same views)
    progress: float  # fraction of training done, in [0, 1)
    phase: int = 0  # which entry of Method.phases this forward pass belongs to
    fields: dict[str, torch.Tensor] = field(default_factory=dict)  # the samples' other fields (ImageSet.fields)


class EpochContext(Protocol):
    """What ``on_epoch_start`` may use (the engine's implementation: selfsup.engine.epoch)."""

    epoch: int
    num_samples: int
    streamed: bool  # the images are decoded from disk on demand (a pass over them costs a decoding pass)
    generator: torch.Generator  # seeded by (seed, epoch): the same epoch draws the same numbers on resume
    fields: dict[str, torch.Tensor]  # the whole in-memory set's other fields (ImageSet.fields), e.g. every caption

    def extract(self, fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 512,
                sharded: bool = True) -> torch.Tensor:
        """``fn`` on uint8 chunks of the whole pretraining set, gathered in order on every rank, without gradients;
        every batch-norm buffer is restored afterwards. ``sharded``: each rank its share (``fn`` must not
        communicate); else every rank the whole set in step."""

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` computed on rank 0 and broadcast to every rank (tensors, or tuples/lists of them). ``fn`` runs
        on rank 0 only: it must not draw from ``generator`` (draw a seed for it beforehand, on every rank)."""

    def set_sampling_weights(self, weights: torch.Tensor) -> None:
        """Draw this epoch's order with replacement by these per-sample weights (e.g. uniform over clusters)."""

    def reset_optimizer_state(self, module: nn.Module) -> None:
        """Forget the optimisers' state (momentum) of ``module``'s parameters, e.g. after re-initialising it."""


class Method(nn.Module):
    """Base class. Subclasses set the class attributes and implement ``training_step``."""

    name: ClassVar[str]
    paper: ClassVar[str]
    needs_labels: ClassVar[bool] = False
    #: the sample fields (ImageSet.fields) the method trains on, e.g. ("frames",) for a video method
    needs_fields: ClassVar[tuple[str, ...]] = ()
    #: the backbone used when the config names none (a GAN's discriminator trunk, say)
    default_backbone: ClassVar[str] = "small"
    #: channels of what the backbone sees (colourisation: 1, the L channel; see :meth:`encoder`)
    in_channels: ClassVar[int] = 3
    #: under DDP, batch norm over the global batch (off where it would leak, e.g. MoCo's shuffled keys)
    global_bn: ClassVar[bool] = True
    #: defaults of the first optimiser unless the user overrides them; lr = base_lr * batch_size / 256
    base_lr: ClassVar[float] = 0.12
    weight_decay: ClassVar[float] = 5e-4
    optimizer: ClassVar[str] = "sgd"
    #: every optimiser's name and its default settings (keys of OPTIMIZER_KEYS); the first is the one the
    #: config's top-level keys (optimizer, lr, weight_decay, ...) set, the others are set under ``optimizers``
    optimizer_defaults: ClassVar[dict[str, dict[str, Any]]] = {"main": {}}
    #: the method's own augmentation defaults (AugmentConfig fields); the user's ``augment`` keys win
    augment_defaults: ClassVar[dict[str, Any]] = {}
    #: the files :meth:`report` writes into the run folder
    pictures: ClassVar[tuple[str, ...]] = ()

    def __init__(self, backbone: nn.Module, feat_dim: int, image_size: int, aug: AugmentConfig | None = None,
                 num_classes: int = 0, num_samples: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        backbone.image_size = image_size  # the size it is trained at: evaluation's default (selfsup.evaluate)
        self.feat_dim = feat_dim
        self.image_size = image_size
        self.aug = aug or AugmentConfig(**self.augment_defaults)
        self.num_classes = num_classes
        self.num_samples = num_samples  # size of the pretraining set (memory banks)
        self.phases: list[str] = [next(iter(self.optimizer_defaults))]

    def parameters_of(self, optimizer: str) -> list[nn.Parameter]:
        """The parameters ``optimizer`` trains; the default single optimiser trains all of them."""
        return list(self.parameters())

    def check_batch(self, global_batch: int) -> None:
        """Refuse (with a UserError) a global batch size this method cannot train with, before any step."""

    def training_step(self, batch: Batch) -> torch.Tensor | dict[str, torch.Tensor]:
        """The loss of one batch (for ``batch.phase``): a scalar, or named terms whose sum is minimised."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> torch.Tensor | dict[str, torch.Tensor]:
        """The training step, as ``forward`` so that DistributedDataParallel can wrap the method."""
        return self.training_step(batch)

    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Called before the first step of every epoch (also the first one after a resume at an epoch boundary;
        a run resumed mid-epoch continues with the state its checkpoint holds)."""

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Update non-gradient state after the optimiser steps (``progress`` in [0, 1])."""

    def report(self, out: Path, data: Dataset) -> dict[str, float]:
        """After training (rank 0): write the method's own pictures into the run folder ``out`` and return
        extra metrics (e.g. a GAN's sample grid and its FID)."""
        return {}

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        """What the network sees for ``batch`` and what it must predict, built by the training step's own code
        (``selfsup views``). The default: two augmented views of every image, as joint-embedding methods train."""
        first, second = augmented(batch.images, self.aug, self.image_size, batch.generator, n=2).chunk(2)
        return [Panel("view 1", first), Panel("view 2 (the positive)", second)]

    @torch.no_grad()
    def outputs(self, images: torch.Tensor, generator: torch.Generator,
                fields: dict[str, torch.Tensor] | None = None) -> list[Panel]:
        """What the network makes of fixed test images (``images``: uint8 on the device), as rows of ``outputs.png``:
        inputs, targets and outputs (noised / clean / denoised, masked / inpainted, samples / reconstructions).
        Drawn in eval mode at every checkpoint and after training, also into TensorBoard; ``generator`` is seeded
        the same every time, so that the rows of successive checkpoints compare. A method with :attr:`needs_fields`
        also gets the images' fields as ``fields=`` (e.g. their clips). Default: none (no picture)."""
        return []

    def encoder(self) -> nn.Module:
        """The network that evaluation, ``embed``, ``export`` and ``retrieve`` use: it maps ImageNet-normalised
        RGB images to features (and exposes ``forward_stages`` for per-layer probes where it can)."""
        return self.backbone
