"""Context encoders: inpaint a removed region of the image from its context (Pathak, Krähenbühl, Donahue, Darrell,
Efros, "Context Encoders: Feature Learning by Inpainting", CVPR 2016)."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.backbones import feature_map
from selfsup.backbones.sngan import SNGANDiscriminator
from selfsup.data.ops.base import resize
from selfsup.data.ops.masks import (
    MASKS,
    block_side,
    box_masks,
    center_boxes,
    grow,
    region_masks,
    sample_blocks,
    sample_region_noise,
)
from selfsup.data.ops.noise import mask_pixels
from selfsup.data.views import augmented, for_this_rank, prepare
from selfsup.errors import UserError
from selfsup.losses.gan import ns_d_loss, ns_g_loss
from selfsup.losses.inpainting import masked_squared_error
from selfsup.methods.base import Batch, Method
from selfsup.methods.gan import DCGAN_ADAM, with_spectral_norm
from selfsup.methods.panels import Panel, unprepare
from selfsup.methods.reconstruction import pixel_decoder, psnr_captions


class ContextEncoder(Method):
    """A region of every augmented image (crops and flips, [0, 1]) is removed and filled with the dataset mean (0
    after ImageNet normalisation); the backbone encodes only that masked image and a pixel decoder on its last
    feature map predicts the whole image. ``mask``: ``region`` (default, the paper's choice for its feature
    results: arbitrary blobs, the lowest ``mask_fraction`` of a smooth random field blurred at a tenth of the
    side), ``blocks`` (``blocks`` random squares of ``mask_fraction / blocks`` of the image each, possibly
    overlapping) or ``center`` (the central square of half the side). Loss: ``1 - adversarial`` times the squared
    error on the removed pixels ([0, 1] space, each sample's mean over its hole), where a band of ``overlap`` px
    of context around the hole is predicted too at ``overlap_weight`` times the weight (default: the paper's 4 of
    128 px for the central mask, none for the others). ``adversarial`` > 0 adds the paper's GAN term: a
    discriminator (the SNGAN trunk at ``discriminator_width``, spectrally normalised, and a linear real/fake
    layer) tells the images from their inpainted versions (the prediction pasted into the hole) in a phase of its
    own, with DCGAN's Adam, and the main phase adds ``adversarial`` times the non-saturating generator loss (the
    paper: 0.001 with 0.999)."""

    name = "context-encoder"
    paper = "Pathak, Krähenbühl, Donahue, Darrell, Efros, Context Encoders: Feature Learning by Inpainting, CVPR 2016"
    optimizer, base_lr, weight_decay = "adam", 8e-4, 0.0  # the paper's 2e-4 at its batch of 64
    optimizer_defaults = {"main": {"betas": (0.5, 0.999)}, "discriminator": DCGAN_ADAM}
    augment_defaults = {"crop_scale": (0.5, 1.0), "jitter_p": 0.0, "gray_p": 0.0}

    def __init__(self, *args, mask: str = "region", mask_fraction: float = 0.25, blocks: int = 4,
                 overlap: int | None = None, overlap_weight: float = 10.0, adversarial: float = 0.0,
                 decoder_dim: int = 256, discriminator_width: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        size = self.image_size
        self.overlap = (round(size * 4 / 128) if mask == "center" else 0) if overlap is None else overlap
        if mask not in MASKS:
            raise UserError(f"context-encoder: mask must be one of {', '.join(MASKS)}, got '{mask}'")
        if not 0 < mask_fraction < 1 or blocks < 1 or decoder_dim < 1:
            raise UserError("context-encoder: mask_fraction must lie in (0, 1), blocks and decoder_dim be at least 1")
        if self.overlap < 0 or overlap_weight < 0 or (mask == "center" and size // 2 - 2 * self.overlap < 1):
            raise UserError(f"context-encoder: overlap ({self.overlap} px) and overlap_weight must be >= 0 and leave "
                            f"a central hole in {size} px images")
        if not 0 <= adversarial < 1:
            raise UserError(f"context-encoder: the GAN term's weight adversarial must be in [0, 1), got {adversarial}")
        self.mask, self.fraction, self.blocks = mask, mask_fraction, blocks
        self.overlap_weight, self.adversarial = overlap_weight, adversarial
        self.side, self.sigma = block_side(size, blocks, mask_fraction), size / 10
        self.decoder = pixel_decoder(self.backbone, self.in_channels, size, 3, decoder_dim)
        if adversarial:
            trunk = SNGANDiscriminator(3, discriminator_width)
            self.discriminator = with_spectral_norm(nn.Sequential(trunk, nn.Linear(trunk.out_dim, 1)))
            self.phases = ["discriminator", "main"]

    def parameters_of(self, optimizer: str) -> list[nn.Parameter]:
        if optimizer == "discriminator":
            return list(self.discriminator.parameters()) if self.adversarial else []
        return [*self.backbone.parameters(), *self.decoder.parameters()]

    def _masked(self, clean: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's input (normalised, the holes at 0) and the holes ``(B, 1, H, W)`` of clean [0, 1] images;
        random masks are drawn for the global batch."""
        n, size, device = len(clean), self.image_size, clean.device
        if self.mask == "center":
            holes = box_masks(*center_boxes(n, size, self.overlap, device), size)
        elif self.mask == "blocks":
            holes = box_masks(for_this_rank(lambda m: sample_blocks(m, size, self.side, self.blocks, generator,
                                                                    device), n), self.side, size)
        else:
            holes = region_masks(for_this_rank(lambda m: sample_region_noise(m, size, self.sigma, generator, device),
                                               n), self.sigma, self.fraction)
        return mask_pixels(prepare(clean), holes), holes

    def _weights(self, holes: torch.Tensor) -> torch.Tensor:
        """The loss's per-pixel weights: 1 in the hole, ``overlap_weight`` on the band of context around it."""
        return holes.float() + self.overlap_weight * (grow(holes, self.overlap) & ~holes).float()

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's whole image (unbounded, [0, 1] space) from the masked input."""
        return self.decoder(feature_map(self.backbone, x), self.image_size)

    def _realness(self, images: torch.Tensor) -> torch.Tensor:
        """The discriminator's logits: SNGAN's global sum pooling scaled to its 8 x 8 map of 32 px images (at any
        size, so that the logits do not grow with the image), then the linear layer."""
        trunk, head = self.discriminator
        return head(trunk.feature_map(prepare(images)).mean((2, 3)) * 64).squeeze(1).float()

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        clean = augmented(batch.images, self.aug, self.image_size, batch.generator)
        x, holes = self._masked(clean, batch.generator)
        if self.phases[batch.phase] == "discriminator":  # real images vs inpainted ones
            with torch.no_grad():
                fake = torch.where(holes, self._predict(x), clean)
            logits = self._realness(torch.cat([clean, fake]))
            return {"adversarial": ns_d_loss(logits[: len(clean)], logits[len(clean) :])}
        prediction = self._predict(x)
        terms = {"reconstruction": (1 - self.adversarial) * masked_squared_error(prediction, clean,
                                                                                  self._weights(holes))}
        if self.adversarial:
            terms["adversarial"] = self.adversarial * ns_g_loss(self._realness(torch.where(holes, prediction, clean)))
        return terms

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        clean = augmented(batch.images, self.aug, self.image_size, batch.generator)
        x, holes = self._masked(clean, batch.generator)
        weights = self._weights(holes)
        shown = torch.where(weights > 0, clean, 0.3 * clean + 0.7)  # the context the loss ignores, faded
        return [Panel("what the network sees: the image, its holes filled with the mean", unprepare(x),
                      [f"{v:.0%} removed" for v in holes.float().mean((1, 2, 3)).tolist()]),
                Panel(f"what it must predict: the removed pixels (and a {self.overlap} px band of context at "
                      f"{self.overlap_weight:g}x weight); the rest, faded, costs nothing", shown)]

    @torch.no_grad()
    def outputs(self, images: torch.Tensor, generator: torch.Generator) -> list[Panel]:
        clean = resize(images, self.image_size)
        x, holes = self._masked(clean, generator)
        inpainted = torch.where(holes, self._predict(x).float().clamp(0.0, 1.0), clean)
        return [Panel("the network's input: the masked image", unprepare(x)),
                Panel("the original", clean),
                Panel("inpainted: the input with the hole filled by the prediction", inpainted,
                      psnr_captions(inpainted, clean))]
