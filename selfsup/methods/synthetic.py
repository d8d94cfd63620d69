"""Multi-task learning on synthetic imagery with feature-space domain adaptation (Ren & Lee, "Cross-Domain
Self-supervised Multi-task Feature Learning using Synthetic Imagery", CVPR 2018): one trunk predicts the depth,
surface normals and instance contours of rendered scenes, while a discriminator on its feature map keeps the features
of synthetic and real images alike."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from selfsup.backbones import feature_map
from selfsup.data.ops.dense import GEOMETRY_MAPS, geometry_views
from selfsup.data.sources import load_images
from selfsup.data.views import augmented, for_this_rank, prepare
from selfsup.errors import UserError
from selfsup.heads.domain import FeatureDiscriminator
from selfsup.losses.gan import ns_d_loss, ns_g_loss
from selfsup.losses.geometry import DEPTH_LOSSES, NORMAL_LOSSES, geometry_losses
from selfsup.methods.base import Batch, Method
from selfsup.methods.gan import DCGAN_ADAM
from selfsup.methods.geometry import geometry_pictures, prediction_rows
from selfsup.methods.panels import Panel
from selfsup.methods.reconstruction import pixel_decoder
from selfsup.methods.video import photometric, shared_params


class SyntheticMultiTask(Method):
    """Every synthetic image (a ``scenes`` sample, whose fields give its ``depth``, camera-space ``normals`` and
    ``contours``) is cropped and flipped with its three maps alike (the image bilinearly, the maps by nearest
    neighbour; a flip negates the normals' x), then colour-augmented. Three pixel decoders on the backbone's last
    feature map predict the depth ([0, 1], near to far; ``depth_loss`` ``l1`` or ``berhu``), the normals
    (``normals_loss`` ``cosine``, the released code's, or ``l2``) and a contour logit per pixel (HED's class-balanced
    cross-entropy, the paper's); the loss is their sum weighted by ``depth_weight``, ``normals_weight`` and
    ``contours_weight`` (1 each, the released config's).

    ``real``: a data SPEC of real images (``cifar10``, a folder, ...; held in memory as uint8 at the run's image size,
    outside the state dict) adds the paper's domain adaptation in GAN-style phases: each step draws as many real
    images as synthetic ones (uniformly, for the global batch), augmented alike, and the trunk encodes both in one
    pass (batch norm sees both domains). A ``discriminator`` phase (DCGAN's Adam, the trunk untouched) trains a small
    convnet on the trunk's feature map (the paper's conv5) to tell real features from synthetic ones; the main phase
    trains trunk and decoders on the tasks plus ``adversarial_weight`` (0.1, the released config's) times the
    non-saturating loss that makes synthetic features look real. Adam at 1e-3 per 256 images, no weight decay."""

    name = "synthetic-multitask"
    paper = "Ren, Lee, Cross-Domain Self-supervised Multi-task Feature Learning using Synthetic Imagery, CVPR 2018"
    needs_fields = tuple(GEOMETRY_MAPS)
    optimizer, base_lr, weight_decay = "adam", 1e-3, 0.0
    optimizer_defaults = {"main": {}, "discriminator": DCGAN_ADAM}
    augment_defaults = {"crop_scale": (0.5, 1.0)}

    def __init__(self, *args, depth_loss: str = "l1", normals_loss: str = "cosine", depth_weight: float = 1.0,
                 normals_weight: float = 1.0, contours_weight: float = 1.0, real: str | None = None,
                 adversarial_weight: float = 0.1, decoder_dim: int = 256, discriminator_dim: int = 256,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if depth_loss not in DEPTH_LOSSES or normals_loss not in NORMAL_LOSSES:
            raise UserError(f"{self.name}: depth_loss must be one of {', '.join(DEPTH_LOSSES)} and normals_loss one "
                            f"of {', '.join(NORMAL_LOSSES)}, got '{depth_loss}' and '{normals_loss}'")
        weights = (depth_weight, normals_weight, contours_weight, adversarial_weight)
        if min(weights) < 0 or not all(math.isfinite(w) for w in weights) or decoder_dim < 1 or discriminator_dim < 1:
            raise UserError(f"{self.name}: the loss weights must be finite and >= 0, decoder_dim and discriminator_dim "
                            f"at least 1")
        self.depth_loss, self.normals_loss, self.adversarial_weight = depth_loss, normals_loss, adversarial_weight
        self.weights = dict(zip(GEOMETRY_MAPS, (depth_weight, normals_weight, contours_weight)))
        self.decoders = torch.nn.ModuleDict({k: pixel_decoder(self.backbone, self.in_channels, self.image_size, c,
                                                              decoder_dim) for k, c in GEOMETRY_MAPS.items()})
        self.real = None if real in (None, "", "none") else str(real)
        if self.real is not None:
            real_images = load_images(self.real, self.image_size, f"{self.name}: the real images real={self.real}")
            self.register_buffer("real_images", real_images, persistent=False)
            channels = self.decoders["depth"].body[0].in_channels  # the feature map's, measured by pixel_decoder
            self.discriminator = FeatureDiscriminator(channels, discriminator_dim)
            self.phases = ["discriminator", "main"]

    def parameters_of(self, optimizer: str) -> list[torch.nn.Parameter]:
        if optimizer == "discriminator":
            return list(self.discriminator.parameters()) if self.real is not None else []
        return [*self.backbone.parameters(), *self.decoders.parameters()]

    def _synthetic(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The network's synthetic input (float [0, 1]: cropped, flipped, colour-augmented) and its targets; the
        crops and flips are drawn for the global batch."""
        missing = [k for k in GEOMETRY_MAPS if k not in batch.fields]
        if missing:
            raise UserError(f"{self.name} trains on rendered scenes: the data lacks the field(s) {', '.join(missing)} "
                            f"(use data: scenes)")
        params = shared_params(batch.images, self.aug, batch.generator)
        x, targets = geometry_views(batch.images, batch.fields, params, self.image_size)
        return photometric(x, self.aug, self.image_size, batch.generator), targets

    def real_indices(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Which real images this rank's ``n`` rows get: uniform draws for the global batch, this rank's share."""
        count = len(self.real_images)
        return for_this_rank(lambda m: torch.randint(0, count, (m,), generator=generator, device=generator.device), n)

    def _real(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` real images augmented as the synthetic ones (float [0, 1])."""
        picked = self.real_images[self.real_indices(n, generator).to(self.real_images.device)]
        return augmented(picked, self.aug, self.image_size, generator)

    def predict(self, fmap: torch.Tensor) -> dict[str, torch.Tensor]:
        """The decoders' raw outputs at ``image_size``: depth, normals (any length) and contour logits."""
        return {k: d(fmap, self.image_size) for k, d in self.decoders.items()}

    def task_terms(self, predicted: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """The three weighted task losses."""
        losses = geometry_losses(predicted, targets, self.depth_loss, self.normals_loss)
        return {k: self.weights[k] * v for k, v in losses.items()}

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        x, targets = self._synthetic(batch)
        if self.real is None:
            return self.task_terms(self.predict(feature_map(self.backbone, prepare(x))), targets)
        n, both = len(x), prepare(torch.cat([x, self._real(len(x), batch.generator)]))
        if self.phases[batch.phase] == "discriminator":  # real features real, synthetic ones synthetic
            with torch.no_grad():
                fmap = feature_map(self.backbone, both)
            logits = self.discriminator(fmap).float()
            return {"domain": ns_d_loss(logits[n:], logits[:n])}
        fmap = feature_map(self.backbone, both)[:n]
        terms = self.task_terms(self.predict(fmap), targets)
        terms["adversarial"] = self.adversarial_weight * ns_g_loss(self.discriminator(fmap).float())
        return terms

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        x, targets = self._synthetic(batch)
        shown = geometry_pictures(targets)
        rows = [Panel("what the network sees: the synthetic image (cropped, flipped, colour-augmented)", x),
                Panel("target: depth (dark near, light far; the same crop and flip)", shown["depth"]),
                Panel("target: surface normals (x, y, z as RGB; x negated where flipped)", shown["normals"]),
                Panel("target: instance contours (class-balanced cross-entropy)", shown["contours"],
                      [f"{v:.0%} contour" for v in targets["contours"].flatten(1).mean(1).tolist()])]
        if self.real is not None:
            rows.append(Panel("real images, augmented alike: the discriminator tells their features from the "
                              "synthetic ones", self._real(len(x), batch.generator)))
        return rows

    @torch.no_grad()
    def outputs(self, images: torch.Tensor, generator: torch.Generator,
                fields: dict[str, torch.Tensor] | None = None) -> list[Panel]:
        """Rows of ``outputs.png`` under the test images: each predicted map (depth, normals, contour probability),
        under its target where the images' ``fields`` are given (the whole image, no flip)."""
        b, _, h, w = images.shape
        whole = torch.tensor([[0.0, 0.0, h, w, 0.0]], device=images.device).expand(b, -1)
        given = fields if fields is not None and all(k in fields for k in GEOMETRY_MAPS) else None
        x, targets = geometry_views(images, given, whole, self.image_size)
        return prediction_rows(self.predict(feature_map(self.backbone, prepare(x))), targets)
