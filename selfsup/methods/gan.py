"""What the adversarial methods share: their papers' Adam, spectral normalisation, and :class:`GAN`, the base of a
method whose generator trains in phases against a discriminator (SSGAN, BiGAN)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from selfsup.data.sources import Dataset
from selfsup.distributed import world_size
from selfsup.errors import UserError
from selfsup.evaluate.pictures import save_image_grid
from selfsup.heads.generator import ResNetGenerator, generate
from selfsup.methods.base import Method


def adam(beta1: float) -> dict:
    """Adam at 2e-4, no weight decay, constant rate, first-moment decay ``beta1``."""
    return dict(optimizer="adam", lr=2e-4, betas=(beta1, 0.999), weight_decay=0.0, schedule="constant",
                warmup_epochs=0.0)


DCGAN_ADAM = adam(0.5)  # Radford et al., ICLR 2016 (BiGAN, the context encoder's and synthetic DA's discriminators)
SNGAN_ADAM = adam(0.0)  # Miyato et al., ICLR 2018, as SSGAN trains


def with_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al., ICLR 2018) on every convolution and linear layer, in place."""
    for m in list(module.modules()):
        if isinstance(m, nn.Conv2d | nn.Linear):
            spectral_norm(m)
    return module


class GAN(Method):
    """A method with a ``generator`` trained against a discriminator: each step runs ``n_dis`` discriminator phases
    (phase k on the batch's images k, k + n_dis, ..., so N processes split them as one does), then one generator
    phase. Its samples are what ``selfsup eval fid`` scores; the run folder gets ``samples.png`` (64 samples)."""

    pictures = ("samples.png",)
    generator: ResNetGenerator

    def set_phases(self, n_dis: int) -> None:
        """``n_dis`` discriminator phases then the generator's, every step."""
        if n_dis < 1:
            raise UserError(f"{self.name}: n_dis (discriminator phases per step) must be at least 1 (got {n_dis})")
        self.n_dis = n_dis
        self.phases = ["discriminator"] * n_dis + ["generator"]

    def check_batch(self, global_batch: int) -> None:
        """Refuse a batch whose per-process share does not split into the ``n_dis`` discriminator phases."""
        if (global_batch // world_size()) % self.n_dis:
            raise UserError(f"{self.name}: each process's batch ({global_batch // world_size()}) must split into "
                            f"n_dis={self.n_dis} equal parts, one per discriminator phase")

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` generated images as uint8 ``(n, 3, H, W)`` (generator in eval mode, latents from ``seed``)."""
        return generate(self.generator, n, seed)

    def report(self, out: Path, data: Dataset) -> dict[str, float]:
        save_image_grid(self.sample(64), out / "samples.png", nrow=8, title=f"{self.name}: 64 generated samples")
        return {}
