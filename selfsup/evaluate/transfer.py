"""Shared pieces of the dense transfer evaluations (:func:`~selfsup.evaluate.segmentation.segment`,
:func:`~selfsup.evaluate.detection.detect`): the encoder's spatial stages as a multi-scale body, the short fine-tuning
schedule, and :func:`dense_table`, both scores for several encoders (pretrained, random init, random rescaled: the
seeds' transfer tables, e.g. Doersch, Gupta, Efros, ICCV 2015; Krähenbühl et al., ICLR 2016; He et al., "Momentum
Contrast for Unsupervised Visual Representation Learning", CVPR 2020, section 4.2)."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from selfsup.backbones import stage_outputs
from selfsup.data.dense import DenseSet
from selfsup.errors import UserError
from selfsup.evaluate.finetune import check_schedule


@dataclass(frozen=True)
class Level:
    """One stage map the dense heads read: its index in the encoder's stage outputs, channels and stride."""

    index: int
    channels: int
    stride: int


@torch.no_grad()
def spatial_levels(encoder: nn.Module, image_size: int, levels: int, device: torch.device) -> list[Level]:
    """The last ``levels`` spatial stage maps of ``encoder`` (``forward_stages``, else its output) with distinct
    strides, the last stage of each stride, measured by one forward pass in eval mode on ``image_size`` px."""
    if levels < 1:
        raise UserError(f"levels must be at least 1 (got {levels})")
    was_training = encoder.training
    try:
        outs = stage_outputs(encoder.eval(), torch.zeros(2, 3, image_size, image_size, device=device))
    finally:
        encoder.train(was_training)
    found: list[Level] = []
    for i, fmap in enumerate(outs):
        if fmap.dim() != 4:
            continue
        level = Level(i, int(fmap.shape[1]), max(1, round(image_size / fmap.shape[-1])))
        if found and found[-1].stride == level.stride:
            found[-1] = level
        else:
            found.append(level)
    if not found:
        raise UserError(f"the {type(encoder).__name__} encoder gives no spatial stage maps (it needs forward_stages "
                        "returning (B, C, H, W) maps) for dense evaluation")
    return found[-levels:]


class StageMaps(nn.Module):
    """``encoder`` as a multi-scale body: images -> an OrderedDict ``{"0": map, "1": map, ...}`` of the chosen
    levels' maps, finest first (torchvision's detection backbone interface)."""

    def __init__(self, encoder: nn.Module, levels: list[Level]) -> None:
        super().__init__()
        self.encoder, self.indices = encoder, [level.index for level in levels]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        outs = stage_outputs(self.encoder, x)
        return OrderedDict((str(k), outs[i]) for k, i in enumerate(self.indices))


def _check(train: DenseSet, test: DenseSet, target: str, epochs: int, batch_size: int, lr: float,
           backbone_lr: float) -> None:
    """One-line errors for sets without ``target`` ("segmentation" or "boxes") and bad schedules."""
    for name, s in (("train", train), ("test", test)):
        if getattr(s, target) is None:
            raise UserError(f"the {name} set has no {target} for this evaluation")
    if train.classes != test.classes:
        raise UserError(f"train and test name different classes ({len(train.classes)} and {len(test.classes)})")
    check_schedule("dense fine-tuning", len(train), epochs, batch_size, lr, backbone_lr)


@dataclass
class Tuning:
    """What both dense fine-tunings share: a copy of the encoder (``trunk``) on ``device``, the image ``size``, the
    two peak rates, the seeded ``generator`` and the :func:`~selfsup.data.ops.dense.dense_views` options ``views``."""

    trunk: nn.Module
    device: torch.device
    size: int
    lr: float
    backbone_lr: float
    generator: torch.Generator
    views: dict

    @property
    def frozen(self) -> bool:
        return self.backbone_lr == 0

    def groups(self, model: nn.Module) -> list[dict]:
        """``model``'s parameters outside the trunk at ``lr``, the trunk's at ``backbone_lr`` (none when frozen)."""
        mine = {id(p) for p in self.trunk.parameters()}
        head = [dict(params=[p for p in model.parameters() if id(p) not in mine], peak=self.lr)]
        return head + ([] if self.frozen else [dict(params=list(self.trunk.parameters()), peak=self.backbone_lr)])

    def train_mode(self, model: nn.Module) -> None:
        """``model`` in training mode, the trunk in eval mode when frozen."""
        model.train()
        self.trunk.train(not self.frozen)


def tuning(encoder: nn.Module, train: DenseSet, test: DenseSet, target: str, *, epochs: int, batch_size: int,
           lr: float, backbone_lr: float | None, augment: bool, crop_scale: tuple[float, float], flip_p: float,
           image_size: int | None, device: str | torch.device | None, seed: int) -> Tuning:
    """Check the options (:func:`_check`) and set up a :class:`Tuning`: ``backbone_lr`` defaults to ``lr``, the size
    to the one the encoder was trained at, else the set's; without ``augment`` the views are the whole images."""
    from selfsup.evaluate import trained_size

    backbone_lr = lr if backbone_lr is None else backbone_lr
    _check(train, test, target, epochs, batch_size, lr, backbone_lr)
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    trunk = copy.deepcopy(encoder).to(device).requires_grad_(backbone_lr > 0)
    views = dict(scale=crop_scale, ratio=(3 / 4, 4 / 3), flip_p=flip_p) if augment else dict(
        scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    return Tuning(trunk, device, image_size or trained_size(encoder) or int(train.images.shape[-1]), lr, backbone_lr,
                  torch.Generator().manual_seed(seed), views)


def rate(peak: float, step: int, total: int, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then a cosine from ``peak`` to 0 at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def fit(run: Tuning, model: nn.Module, loss_of: Callable[[torch.Tensor], torch.Tensor], score: Callable[[], float],
        *, n: int, epochs: int, batch_size: int, weight_decay: float, progress: Callable[[str], None] | None,
        metric: str) -> list[float]:
    """SGD (momentum 0.9) on ``loss_of(indices)`` for ``epochs`` passes over ``n`` samples, each a permutation from
    the run's generator cut into ``max(1, n // batch_size)`` near-equal batches; both parameter groups
    (:meth:`Tuning.groups`) follow :func:`rate` (warmup over the first 10% of the steps). Returns ``score()`` after
    every epoch; ``progress`` gets a line per epoch."""
    opt = torch.optim.SGD(run.groups(model), lr=run.lr, momentum=0.9, weight_decay=weight_decay)
    n_batches = max(1, n // batch_size)
    total, step, curve = epochs * n_batches, 0, []
    for epoch in range(epochs):
        run.train_mode(model)
        loss_sum = torch.zeros((), device=run.device)
        for idx in torch.randperm(n, generator=run.generator).tensor_split(n_batches):
            loss = loss_of(idx)
            for g in opt.param_groups:
                g["lr"] = rate(g["peak"], step, total, total // 10)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
            step += 1
        curve.append(score())
        if progress:
            progress(f"epoch {epoch + 1}/{epochs}: train loss {loss_sum.item() / n:.3f}, test {metric} "
                     f"{curve[-1] * 100:.1f}")
    return curve


def dense_table(runs: dict[str, nn.Module], train: DenseSet, test: DenseSet, *,
                segmentation: dict | None = None, detection: dict | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, dict[str, float]]:
    """Segmentation and/or detection scores of every encoder in ``runs`` (e.g. ``{"simclr": run.encoder,
    "random init": build_backbone(...), "random rescaled": random_rescaled(build_backbone(...), ...)}``):
    ``{name: {"miou", "pixel_acc", "map50", "map"}}``, each task run with its options dict (``{}`` for its
    defaults; None leaves it out; by default both tasks the sets have targets for)."""
    from selfsup.evaluate.detection import detect
    from selfsup.evaluate.segmentation import segment

    if segmentation is None and detection is None:
        segmentation = {} if train.segmentation is not None else None
        detection = {} if train.boxes is not None else None
    table: dict[str, dict[str, float]] = {}
    for name, encoder in runs.items():
        row = table[name] = {}
        for task, fn, options in (("segmentation", segment, segmentation), ("detection", detect, detection)):
            if options is not None:
                if progress:
                    progress(f"{name}: {task}")
                row.update({k: v for k, v in fn(encoder, train, test, progress=progress, **options).items()
                            if k != "curve"})
    return table
