"""Masked autoencoder: reconstruct the pixels of randomly masked patches from the visible ones (He, Chen, Xie, Li,
Dollár, Girshick, "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.backbones.vit import token_encoder
from selfsup.data.ops.base import resize
from selfsup.data.ops.tokens import (
    gather_tokens,
    mask_from_noise,
    paste_patches,
    patchify,
    sample_token_noise,
    unpatchify,
    visible_count,
)
from selfsup.data.views import augmented, for_this_rank, prepare
from selfsup.errors import UserError
from selfsup.heads.token_decoder import TokenDecoder
from selfsup.losses.mae import masked_patch_mse, normalize_patches
from selfsup.methods.base import Batch, Method
from selfsup.methods.panels import Panel, stretch, unprepare


class MAE(Method):
    """Every augmented image (random resized crop, scale 0.2-1, and flip only) is cut into the backbone's patches;
    per sample a uniformly random ``mask_ratio`` of them (MAE: 0.75) is masked, the argsort of uniform noise, so
    every sample keeps exactly ``int(N (1 - mask_ratio))``. The ViT encoder runs on the visible patch tokens (and
    its class token) only; a light transformer decoder (``decoder_depth`` blocks of width ``decoder_dim``; the
    paper's 8 x 512) adds a mask token in every masked position and predicts every patch's pixels of the
    normalised input; the loss is the mean squared error on the masked patches only, each target patch
    normalised by its own mean and variance with ``norm_pix`` (the paper's default). AdamW (betas 0.9 / 0.95,
    weight decay 0.05, lr 1.5e-4 x batch / 256) with 40 warmup epochs. The backbone must be a ViT: ``vit-tiny``
    or a ``timm:`` ViT; the evaluated features are its class token after the final norm."""

    name = "mae"
    paper = "He, Chen, Xie, Li, Dollár, Girshick, Masked Autoencoders Are Scalable Vision Learners, CVPR 2022"
    default_backbone = "vit-tiny"
    optimizer, base_lr, weight_decay = "adamw", 1.5e-4, 0.05
    optimizer_defaults = {"main": {"betas": (0.9, 0.95), "warmup_epochs": 40}}
    augment_defaults = {"crop_scale": (0.2, 1.0), "jitter_p": 0.0, "gray_p": 0.0}

    def __init__(self, *args, mask_ratio: float = 0.75, decoder_dim: int = 128, decoder_depth: int = 2,
                 decoder_heads: int = 4, norm_pix: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 < mask_ratio < 1.0:
            raise UserError(f"mae's mask_ratio must be in (0, 1), got {mask_ratio}")
        encoder = token_encoder(self.backbone)
        self.patch = encoder.patch_size
        if self.image_size % self.patch:
            raise UserError(f"mae needs an image size divisible by the {self.patch} px patches (got {self.image_size})")
        grid = self.image_size // self.patch
        self.tokens, self.keep = grid * grid, visible_count(grid * grid, mask_ratio)
        if self.keep < 1:
            raise UserError(f"mae's mask_ratio {mask_ratio} leaves none of the {self.tokens} patches visible")
        with torch.no_grad():
            size, device = self.image_size, next(self.backbone.parameters()).device
            prefix, _ = encoder.embed(torch.zeros(1, self.in_channels, size, size, device=device))
        self.norm_pix = norm_pix
        self.decoder = TokenDecoder(prefix.shape[-1], decoder_dim, decoder_depth, decoder_heads, grid,
                                    self.patch**2 * self.in_channels, prefix=prefix.shape[1])

    def _masked(self, view: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The normalised input of float views, the visible patches ``(B, keep)``, the restore order ``(B, N)`` and
        the mask ``(B, N)`` (1: masked), drawn per sample for the global batch."""
        x = prepare(view)
        noise = for_this_rank(lambda n: sample_token_noise(n, self.tokens, generator, x.device), len(x))
        return x, *mask_from_noise(noise, self.keep)

    def _predict(self, x: Tensor, keep: Tensor, restore: Tensor) -> Tensor:
        """The encoder on the prefix and visible tokens only, then the decoder: a prediction ``(B, N, K)``."""
        encoder = token_encoder(self.backbone)
        prefix, patches = encoder.embed(x)
        h = torch.cat([prefix, gather_tokens(patches, keep)], 1)
        for block in encoder.blocks:
            h = block(h)
        return self.decoder(encoder.norm(h), restore)

    def training_step(self, batch: Batch) -> Tensor:
        view = augmented(batch.images, self.aug, self.image_size, batch.generator)
        x, keep, restore, mask = self._masked(view, batch.generator)
        return masked_patch_mse(self._predict(x, keep, restore), patchify(x, self.patch), mask, self.norm_pix)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        x, _, _, mask = self._masked(augmented(batch.images, self.aug, self.image_size, batch.generator),
                                     batch.generator)
        target = patchify(x, self.patch)
        target = normalize_patches(target) if self.norm_pix else target
        shown = unpatchify(target * mask.unsqueeze(-1), self.patch, *x.shape[-2:])
        captions = [f"{int(m)}/{self.tokens} masked" for m in mask.sum(1).tolist()]
        normalised = ", each normalised" if self.norm_pix else ""
        return [Panel("what the encoder sees: the visible patches (masked ones grey)",
                      paste_patches(unprepare(x), 0.5, mask, self.patch), captions),
                Panel(f"what the decoder must predict: the masked patches{normalised}", stretch(shown))]

    @torch.no_grad()
    def outputs(self, images: Tensor, generator: torch.Generator) -> list[Panel]:
        """Rows (under the engine's row of the images): the visible patches, the reconstruction (with ``norm_pix``,
        every patch un-normalised with the mean patch mean and standard deviation of the image's visible patches),
        and the reconstruction with the visible patches pasted in."""
        x, keep, restore, mask = self._masked(resize(images, self.image_size), generator)
        pred, target = self._predict(x, keep, restore).float(), patchify(x, self.patch)
        if self.norm_pix:
            visible = (1.0 - mask) / (1.0 - mask).sum(1, keepdim=True)  # (B, N), each row sums to 1
            mean = (target.mean(-1) * visible).sum(1).view(-1, 1, 1)
            std = ((target.var(-1) + 1e-6).sqrt() * visible).sum(1).view(-1, 1, 1)
            pred = pred * std + mean
        original, recon = unprepare(x), unprepare(unpatchify(pred, self.patch, *x.shape[-2:]))
        return [Panel("masked input: the visible patches", paste_patches(original, 0.5, mask, self.patch)),
                Panel("reconstruction", recon),
                Panel("reconstruction, visible patches pasted", paste_patches(original, recon, mask, self.patch))]
