"""CMC: contrastive multiview coding between every image's lightness L and colour ab (Tian, Krishnan, Isola,
"Contrastive Multiview Coding", ECCV 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones.channels import with_in_channels
from selfsup.backbones.inputs import LabEncoder, scale_lab
from selfsup.data.ops.base import resize
from selfsup.data.ops.lab import rgb_to_lab
from selfsup.data.views import augmented, device_layout
from selfsup.distributed import gather
from selfsup.dynamics.bank import PendingRows, sampled_negatives
from selfsup.errors import UserError
from selfsup.losses import info_nce, instance_softmax
from selfsup.losses.multiview import cross_view_nce
from selfsup.methods.base import Batch, EpochContext, Method
from selfsup.methods.panels import Panel
from selfsup.methods.split_brain import at_mid_grey, grey


class CMC(Method):
    """One augmented view of every image (random resized crop and flip, no colour augmentation: the paper's and its
    code's L / ab setting) is split into Lab; the backbone sees L (scaled to [-1, 1]), a copy of it with its own
    weights (:func:`~selfsup.backbones.channels.with_in_channels`: every weight copied but a fresh input convolution)
    sees ab (divided by 110), each followed by a linear projection to ``proj_dim`` (128), L2-normalised. The loss is
    contrastive in both directions (L anchors with their ab as the positive, and ab anchors with their L), at
    temperature ``temperature`` (0.07), logged as ``l_anchors`` and ``ab_anchors``; its negatives are
    ``negatives``:

    - ``"bank"`` (the paper's): one memory bank per view, one row per training image, updated with momentum
      ``bank_momentum`` (0.5) by the rows of every rank after each step (NPID's update); an L anchor's positive is its
      image's row of the ab bank, its negatives ``num_negatives`` rows of the ab bank drawn uniformly (shared by the
      batch and both directions), scored by the softmax over them (InfoNCE; the paper's code also offers NCE); 0, or
      at least the dataset size, runs the softmax over the whole bank. Both banks start from the initial features
      (as NPID here), except on streamed sets;
    - ``"batch"``: the other images of the global batch, gathered across ranks as SimCLR.

    The paper splits one AlexNet (or ResNet-50) into halves, one per view; here each trunk is the configured backbone
    (the recipes halve its width). The evaluated encoder concatenates both trunks (:class:`LabEncoder`).
    """

    name = "cmc"
    paper = "Tian, Krishnan, Isola, Contrastive Multiview Coding, ECCV 2020"
    in_channels = 1
    base_lr = 0.03  # the paper's SGD rate at batch 256
    weight_decay = 1e-4
    augment_defaults = {"crop_scale": (0.2, 1.0), "jitter_p": 0.0, "gray_p": 0.0}

    def __init__(self, *args, negatives: str = "bank", num_negatives: int = 4096, temperature: float = 0.07,
                 proj_dim: int = 128, bank_momentum: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if negatives not in ("bank", "batch"):
            raise UserError(f"cmc negatives must be 'bank' or 'batch' (got {negatives!r})")
        if temperature <= 0 or proj_dim < 1 or num_negatives < 0 or not 0 <= bank_momentum < 1:
            raise UserError(f"cmc needs temperature > 0, proj_dim >= 1, num_negatives >= 0 and bank_momentum in "
                            f"[0, 1) (got {temperature}, {proj_dim}, {num_negatives}, {bank_momentum})")
        if negatives == "bank" and self.num_samples <= 0:
            raise UserError("cmc's memory banks keep one row per training image and need the dataset size "
                            "(num_samples); negatives: batch needs none")
        self.negatives, self.num_negatives, self.temperature = negatives, num_negatives, temperature
        self.bank_momentum = bank_momentum
        self.colour_trunk = with_in_channels(self.backbone, 2)  # sees ab
        self.lightness_head, self.colour_head = nn.Linear(self.feat_dim, proj_dim), nn.Linear(self.feat_dim, proj_dim)
        if negatives == "bank":  # memory[0]: the L bank, memory[1]: the ab bank
            self.register_buffer("memory", F.normalize(torch.randn(2, self.num_samples, proj_dim), dim=2))
            self._pending = (PendingRows(), PendingRows())

    def _lab(self, batch: Batch) -> torch.Tensor:
        """The Lab image of every sample's augmented view: what the step and ``views`` split into L and ab."""
        return rgb_to_lab(augmented(batch.images, self.aug, self.image_size, batch.generator))

    def _embed(self, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The projections (not yet normalised) of L by the backbone and of ab by the colour trunk."""
        lightness, colour = scale_lab(lab)
        return (self.lightness_head(self.backbone(device_layout(lightness))),
                self.colour_head(self.colour_trunk(device_layout(colour))))

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        z_l, z_ab = self._embed(self._lab(batch))
        if self.negatives == "batch":
            return dict(zip(("l_anchors", "ab_anchors"), cross_view_nce(z_l, z_ab, self.temperature), strict=True))
        indices = gather(batch.indices)
        for pending, z in zip(self._pending, (z_l, z_ab), strict=True):
            pending.hold(indices, gather(z.detach().float()))
        noise = sampled_negatives(self.memory.transpose(0, 1), self.num_negatives, batch.generator)  # (K, 2, D)
        terms = {}
        for name, anchor, other in (("l_anchors", z_l, 1), ("ab_anchors", z_ab, 0)):
            bank = self.memory[other]
            terms[name] = (instance_softmax(anchor, bank, batch.indices, self.temperature) if noise is None else
                           info_nce(anchor, bank[batch.indices], noise[:, other], self.temperature))
        return terms

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Write the step's normalised projections (of all ranks) into their rows of both banks."""
        if self.negatives == "bank":
            for view, pending in enumerate(self._pending):
                pending.write(self.memory[view], self.bank_momentum)

    @torch.no_grad()
    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Before the first step, fill both banks with every image's projections under the initial weights
        (un-augmented; batch norm in training mode over the global batch, as NPID here), so that the positives mean
        something from the first step. Streamed sets keep the random rows (a full decoding pass costs an epoch)."""
        if self.negatives != "bank" or ctx.epoch > 0 or ctx.streamed:
            return
        rows = ctx.extract(lambda x: torch.stack([F.normalize(z.float(), dim=1) for z in self._embed(
            rgb_to_lab(resize(x, self.image_size)))], 1), batch_size=512, sharded=False)
        self.memory.copy_(rows.to(self.memory.device).transpose(0, 1))

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        lab = self._lab(batch)
        ids = [f"image {i}" for i in batch.indices.tolist()]
        return [Panel("view 1: the lightness L (trunk 1); its positive is the ab below it", grey(lab[:, :1]), ids),
                Panel("view 2: the colour ab, shown at L = 50 (trunk 2); its positive is the L above it",
                      at_mid_grey(lab[:, 1:]), ids)]

    def encoder(self) -> nn.Module:
        return LabEncoder(self.backbone, self.colour_trunk)
