"""Rotation feature decoupling: a rotation-related half of the features predicts the rotation, a rotation-irrelevant
half is made invariant to it and discriminates instances (Feng, Xu, Tao, "Self-Supervised Representation Learning
by Rotation Feature Decoupling", CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.ops.base import resize
from selfsup.data.ops.rotate import rotations
from selfsup.data.views import augmented, prepare
from selfsup.distributed import gather
from selfsup.dynamics.bank import PendingRows, sampled_negatives
from selfsup.errors import UserError
from selfsup.heads import MLP
from selfsup.losses import info_nce, instance_softmax
from selfsup.losses.decoupling import rotation_ambiguity_weights, rotation_invariance_loss, weighted_rotation_loss
from selfsup.methods.base import Batch, EpochContext, Method
from selfsup.methods.panels import Panel


class Decoupling(Method):
    """Every augmented image (crops and flips, as RotNet) in its four rotations; the backbone's feature of each is
    split into its first ``rotation_dim`` dimensions (default: half), the rotation-related part, and the rest.

    - **rotation**: a classifier (``head_hidden_dim``; 0: linear) on the rotation part predicts the angle;
      cross-entropy weighted per rotated image by ``1 - p ** gamma``, ``p`` the probability that it is an unrotated
      image (:func:`~selfsup.losses.decoupling.rotation_ambiguity_weights`: the paper's positive-unlabeled
      estimate, here the classifier's own probability of 0 degrees), so that images whose orientation is
      ambiguous count less; applied from ``weight_from`` of training on (the authors' code: the last 35 of 245
      epochs; before, the network's probabilities mean little), unweighted before;
    - **invariance**: each rotation's rotation-irrelevant part pulled to their mean over the four rotations;
    - **instance**: that mean, through a linear ``proj_dim`` layer and L2-normalised, classified against a memory
      bank of one row per image (NPID's non-parametric softmax at ``temperature`` over ``negatives`` sampled rows,
      0 or at least the set size: the whole bank; the paper uses NPID's NCE estimate of it), the rows updated with
      ``bank_momentum``; the bank starts from every image's feature under the initial weights, as :class:`NPID`.

    The loss is the three terms times ``rotation_weight``, ``instance_weight``, ``invariance_weight`` (the paper:
    1 each). The evaluated encoder is the whole backbone (both parts).
    """

    name = "decoupling"
    paper = "Feng, Xu, Tao, Self-Supervised Representation Learning by Rotation Feature Decoupling, CVPR 2019"
    augment_defaults = {"crop_scale": (0.5, 1.0), "jitter_p": 0.0, "gray_p": 0.0}
    #: on the small convnet the house default 0.12 gave kNN 87% on the digits smoke run, 0.03 gave 93% (random init
    #: 82%, measured); the recipes set the authors' rates (their ImageNet config starts at 0.01 at batch 192)
    base_lr = 0.03

    def __init__(self, *args, rotation_dim: int | None = None, head_hidden_dim: int = 512, proj_dim: int = 128,
                 temperature: float = 0.07, negatives: int = 4096, bank_momentum: float = 0.5, gamma: float = 2.0,
                 weight_from: float = 210 / 245, rotation_weight: float = 1.0, instance_weight: float = 1.0,
                 invariance_weight: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rotation_dim = self.feat_dim // 2 if rotation_dim is None else rotation_dim
        if not 0 < self.rotation_dim < self.feat_dim:
            raise UserError(f"decoupling: rotation_dim must be between 1 and {self.feat_dim - 1}, the backbone's "
                            f"{self.feat_dim} features less one (got {self.rotation_dim})")
        if self.num_samples <= 0:
            raise UserError("decoupling keeps one memory row per training image and needs the dataset size "
                            "(num_samples)")
        if gamma <= 0 or temperature <= 0:
            raise UserError("decoupling: gamma and temperature must be > 0")
        self.temperature, self.negatives, self.bank_momentum = temperature, negatives, bank_momentum
        self.gamma, self.weight_from = gamma, weight_from
        self.term_weights = {"rotation": rotation_weight, "instance": instance_weight,
                             "invariance": invariance_weight}
        self.classifier = MLP(self.rotation_dim, head_hidden_dim, 4) if head_hidden_dim \
            else nn.Linear(self.rotation_dim, 4)
        self.head = nn.Linear(self.feat_dim - self.rotation_dim, proj_dim)
        self.register_buffer("bank", F.normalize(torch.randn(self.num_samples, proj_dim), dim=1))
        self._pending = PendingRows()

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rotation logits (4B, 4), the rotation-irrelevant parts (4, B, d) and the instance embedding of their
        mean (B, proj_dim) of the four rotations ``x`` (4B, ...) of B images, one block per angle."""
        rot, rest = self.backbone(prepare(x)).split([self.rotation_dim, self.feat_dim - self.rotation_dim], 1)
        rest = rest.float().view(4, -1, rest.shape[1])
        return self.classifier(rot).float(), rest, self.head(rest.mean(0))

    @torch.no_grad()
    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Before the first step, the bank holds every image's instance embedding under the initial weights (as
        NPID's; streamed sets keep random rows)."""
        if ctx.epoch > 0 or ctx.streamed:
            return
        rows = ctx.extract(lambda x: F.normalize(self._split(rotations(resize(x, self.image_size))[0])[2].float(),
                                                 dim=1), batch_size=512, sharded=False)
        self.bank.copy_(rows.to(self.bank.device))

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        x, target = rotations(augmented(batch.images, self.aug, self.image_size, batch.generator))
        logits, rest, embedding = self._split(x)
        weights = rotation_ambiguity_weights(logits, target, self.gamma) if batch.progress >= self.weight_from \
            else torch.ones_like(target, dtype=torch.float32)
        self._pending.hold(gather(batch.indices), gather(F.normalize(embedding.detach().float(), dim=1)))
        noise = sampled_negatives(self.bank, self.negatives, batch.generator)
        instance = instance_softmax(embedding, self.bank, batch.indices, self.temperature) if noise is None \
            else info_nce(embedding, self.bank[batch.indices], noise, self.temperature)
        terms = {"rotation": weighted_rotation_loss(logits, target, weights), "instance": instance,
                 "invariance": rotation_invariance_loss(rest)}
        return {k: self.term_weights[k] * v for k, v in terms.items()}

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Write the step's embeddings (of all ranks) into their bank rows."""
        self._pending.write(self.bank, self.bank_momentum)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        x, target = rotations(augmented(batch.images, self.aug, self.image_size, batch.generator))
        weights = rotation_ambiguity_weights(self._split(x)[0], target, self.gamma)
        return [Panel(f"rotated by {90 * k} degrees (class {k}); the weight its rotation loss gets once weighting "
                      "starts", part, [f"{90 * k} deg, w={w:.2f}" for w in ws.tolist()])
                for k, (part, ws) in enumerate(zip(x.chunk(4), weights.chunk(4), strict=True))]
