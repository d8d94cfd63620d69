"""Exemplar-CNN: every seed patch is its own class, learnt from many random transformations of it (Dosovitskiy,
Springenberg, Riedmiller, Brox, "Discriminative Unsupervised Feature Learning with Convolutional Neural Networks",
NIPS 2014)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.ops.affine import affine_patches, energy_boxes, sample_patch_affine
from selfsup.data.ops.hsv import exemplar_color, pixel_moments, principal_components, sample_exemplar_color
from selfsup.data.views import for_this_rank, prepare
from selfsup.errors import UserError
from selfsup.heads import MLP
from selfsup.methods.base import Batch, EpochContext, Method
from selfsup.methods.panels import Panel

#: the paper's 8,000 seeds are for STL-10's 100,000 unlabeled images; its follow-up (TPAMI 2016) finds accuracy
#: saturating in the thousands of classes while the classifier grows with them, so a few thousand suit CIFAR
DEFAULT_SEEDS = 4000


class Exemplar(Method):
    """Before the first epoch, ``seeds`` images are drawn at random (default 4,000, or the whole set if smaller;
    ``all``: every image) and every image gets two uniform numbers (buffers saved with the run: a resume is exact):
    the first sets its patch side, uniform on [``patch_min``, ``patch_max``] of the image's shorter side, the second
    picks where the patch lies, with probability proportional to the squared gradient magnitude inside it (the paper's
    "considerable gradients"). The pixels' principal components over the whole set (one pass) feed the colour
    transform. Every epoch draws only seeds (sampling weights), so a batch is seed images; the step cuts every
    seed's patch and transforms it anew, as the paper's surrogate classes are made of (here drawn afresh every
    step instead of a fixed set of K per seed): translation by up to ``translate`` of the patch side, scaling by
    0.7 to 1.4, rotation by up to ``degrees``, then, if ``color``, the paper's "contrast 1" (principal-component
    factors 0.5 to 2), "contrast 2" (saturation and value to a power 0.25 to 4, times 0.7 to 1.4, plus -0.1 to
    0.1) and "color" (hue shift of -0.1 to 0.1), all at ``image_size``. The backbone and a classifier
    (``head_hidden_dim``; 0: linear) predict which seed a patch comes from (cross-entropy over the seeds).

    The paper cuts 32 px patches (a third of the side, at varying scales) from STL-10's 96 px images; CIFAR-sized
    images are mostly their object, so the default patch is 0.6 to 1 of the side (on 8 px digits, half the side
    learnt less than random features, 0.75 to 1 more).
    """

    name = "exemplar"
    paper = ("Dosovitskiy, Springenberg, Riedmiller, Brox, Discriminative Unsupervised Feature Learning with "
             "Convolutional Neural Networks, NIPS 2014")

    def __init__(self, *args, seeds: int | str | None = None, patch_min: float = 0.6, patch_max: float = 1.0,
                 translate: float = 0.2, degrees: float = 20.0, color: bool = True, head_hidden_dim: int = 512,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.num_samples <= 0:
            raise UserError("exemplar draws its seed images from the training set and needs its size (num_samples)")
        seeds = self.num_samples if seeds == "all" else seeds
        if seeds is not None and not (isinstance(seeds, int) and 2 <= seeds <= self.num_samples):
            raise UserError(f"exemplar: seeds must be 'all' or between 2 and the {self.num_samples} images (got "
                            f"{seeds})")
        if not 0 < patch_min <= patch_max <= 1:
            raise UserError(f"exemplar: need 0 < patch_min <= patch_max <= 1 (got {patch_min}, {patch_max})")
        if translate < 0 or degrees < 0:
            raise UserError("exemplar: translate and degrees must be >= 0")
        self.seeds = seeds or min(DEFAULT_SEEDS, self.num_samples)
        self.patch_min, self.patch_max, self.translate, self.degrees = patch_min, patch_max, translate, degrees
        self.color = color
        self.classifier = MLP(self.feat_dim, head_hidden_dim, self.seeds) if head_hidden_dim \
            else nn.Linear(self.feat_dim, self.seeds)
        self.register_buffer("seed_class", torch.full((self.num_samples,), -1, dtype=torch.long))
        self.register_buffer("patch_draws", torch.zeros(self.num_samples, 2))
        self.register_buffer("pixel_mean", torch.zeros(3))
        self.register_buffer("pixel_components", torch.eye(3))

    @torch.no_grad()
    def on_epoch_start(self, ctx: EpochContext) -> None:
        """At epoch 0: the seeds, every image's patch draws and the pixels' principal components; every epoch:
        sampling weights on the seeds only."""
        if ctx.epoch == 0:
            chosen = torch.randperm(ctx.num_samples, generator=ctx.generator)[: self.seeds]
            self.seed_class.fill_(-1)
            self.seed_class[chosen.to(self.seed_class.device)] = torch.arange(self.seeds, device=self.seed_class.device)
            self.patch_draws.copy_(torch.rand(ctx.num_samples, 2, generator=ctx.generator))
            if self.color:
                mean, components = principal_components(ctx.extract(pixel_moments))
                self.pixel_mean.copy_(mean)
                self.pixel_components.copy_(components)
        ctx.set_sampling_weights((self.seed_class >= 0).double().cpu())

    def patch_boxes(self, batch: Batch) -> torch.Tensor:
        """Every image's patch box (top, left, side, side), fixed by its two draws and its gradients."""
        draws = self.patch_draws[batch.indices]
        frac = self.patch_min + draws[:, 0] * (self.patch_max - self.patch_min)
        sides = (frac * min(batch.images.shape[-2:])).round().clamp(min=1)
        return energy_boxes(batch.images, sides, draws[:, 1])

    def _inputs(self, batch: Batch, boxes: torch.Tensor) -> torch.Tensor:
        """One random transformation of every patch, float [0, 1] at ``image_size`` (parameters of the global
        batch, this rank's rows)."""
        b, g = len(batch.images), batch.generator
        with torch.autocast(batch.images.device.type, enabled=False):
            affine = for_this_rank(lambda n: sample_patch_affine(n, self.translate, (0.7, 1.4), self.degrees, g), b)
            x = affine_patches(batch.images, boxes, affine, self.image_size)
            if self.color:
                params = for_this_rank(lambda n: sample_exemplar_color(n, generator=g), b)
                x = exemplar_color(x, self.pixel_mean, self.pixel_components, params)
        return x

    def training_step(self, batch: Batch) -> torch.Tensor:
        x = self._inputs(batch, self.patch_boxes(batch))
        return F.cross_entropy(self.classifier(self.backbone(prepare(x))).float(), self.seed_class[batch.indices])

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        boxes = self.patch_boxes(batch)
        identity = boxes.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(len(boxes), 4)
        classes = self.seed_class[batch.indices].tolist()
        captions = [f"seed {c}" if c >= 0 else "not a seed" for c in classes]
        seed = Panel("the seed patch (its class: the seed's index)", affine_patches(batch.images, boxes, identity,
                                                                                     self.image_size), captions)
        return [seed, *(Panel(f"random transformation {k + 1} (the same class)", self._inputs(batch, boxes), captions)
                        for k in range(3))]
