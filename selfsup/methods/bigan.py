"""BiGAN / BigBiGAN: a GAN with an encoder E, whose discriminator judges image-latent pairs, (x, E(x)) against
(G(z), z); E, the backbone, learns to invert the generator (Donahue, Krähenbühl, Darrell, "Adversarial Feature
Learning", ICLR 2017; Dumoulin et al., "Adversarially Learned Inference", ICLR 2017; Donahue & Simonyan, "Large
Scale Adversarial Representation Learning", NeurIPS 2019)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.data.ops.base import resize
from selfsup.data.views import augmented, for_this_rank, prepare
from selfsup.errors import UserError
from selfsup.heads.generator import ResNetGenerator, sample_latent, to_unit
from selfsup.heads.joint import JointDiscriminator
from selfsup.losses.bigan import bigan_d_loss, bigan_eg_loss
from selfsup.methods.base import Batch
from selfsup.methods.gan import DCGAN_ADAM, GAN, with_spectral_norm
from selfsup.methods.panels import Panel, unprepare

SCORES = ("joint", "image", "latent")  # the names of the loss terms of s_xz, s_x, s_z


class BiGAN(GAN):
    """Encoder E = the backbone + a linear layer to the latent: with ``stochastic`` (BigBiGAN) a Gaussian, mean and
    softplus scale, sampled by reparameterisation (z = mu + sigma * eps); else BiGAN's deterministic z = E(x).
    Generator G = the SNGAN ResNet generator (``z_dim``, ``generator_width``); latents z ~ N(0, I). Discriminator
    D(x, z) = :class:`~selfsup.heads.joint.JointDiscriminator` on SNGAN's ResNet trunk (``discriminator_width``)
    and MLPs of ``hidden_dim`` units, every layer spectrally normalised; scores s_xz, and with ``unary`` (BigBiGAN)
    s_x and s_z. Each step runs ``n_dis`` discriminator phases, phase k on the batch's images k, k + n_dis, ...:
    hinge loss summed over the scores, (x, E(x)) real and (G(z), z) fake (:func:`~selfsup.losses.bigan.bigan_d_loss`);
    then one phase of G and E together (one optimiser) on the whole batch, the labels swapped: mean s(x, E(x)) -
    mean s(G(z), z) (:func:`~selfsup.losses.bigan.bigan_eg_loss`). Adam 2e-4, betas 0.5 / 0.999 (BiGAN), constant.
    E is what evaluation probes; ``samples.png`` holds 64 samples, ``outputs.png`` reconstructions G(E(x))."""

    name = "bigan"
    paper = ("Donahue, Kraehenbuehl, Darrell, Adversarial Feature Learning, ICLR 2017; Donahue & Simonyan, "
             "Large Scale Adversarial Representation Learning, NeurIPS 2019")
    optimizer_defaults = {"discriminator": DCGAN_ADAM, "generator": DCGAN_ADAM}
    augment_defaults = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "jitter_p": 0.0, "gray_p": 0.0}

    def __init__(self, *args, n_dis: int = 1, z_dim: int = 128, generator_width: float = 1.0,
                 discriminator_width: float = 1.0, hidden_dim: int = 512, unary: bool = True, stochastic: bool = True,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if hidden_dim < 1:
            raise UserError(f"bigan: hidden_dim must be at least 1 (got {hidden_dim})")
        self.set_phases(n_dis)
        self.z_dim, self.stochastic = z_dim, stochastic
        self.generator = ResNetGenerator(z_dim, generator_width, self.image_size)
        self.to_latent = nn.Linear(self.feat_dim, 2 * z_dim if stochastic else z_dim)
        trunk = build_backbone("sngan", self.image_size, width=discriminator_width)
        self.discriminator = with_spectral_norm(JointDiscriminator(trunk, trunk.out_dim, z_dim, hidden_dim, unary))

    def parameters_of(self, optimizer: str) -> list[nn.Parameter]:
        if optimizer == "discriminator":
            return list(self.discriminator.parameters())
        return [p for m in (self.generator, self.backbone, self.to_latent) for p in m.parameters()]

    def _latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` draws of N(0, I) for the global batch, this process's rows (N processes draw what one would)."""
        return for_this_rank(lambda m: sample_latent(m, self.z_dim, generator), n).to(self.to_latent.weight.device)

    def _encode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """E(x) of normalised images: the mean plus softplus scale times N(0, I) noise, or deterministic."""
        out = self.to_latent(self.backbone(x)).float()
        if not self.stochastic:
            return out
        mean, scale = out.chunk(2, dim=1)
        return mean + F.softplus(scale) * self._latents(len(x), generator)

    def _pairs(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """The step's pairs: real images x (normalised) and E(x), fakes G(z) (in [0, 1]) and z."""
        x = prepare(augmented(images, self.aug, self.image_size, generator))
        z_real = self._encode(x, generator)
        z = self._latents(len(x), generator)
        return x, z_real, to_unit(self.generator(z)), z

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        discriminator = batch.phase < self.n_dis
        images = batch.images[batch.phase :: self.n_dis] if discriminator else batch.images
        with torch.no_grad() if discriminator else contextlib.nullcontext():  # E and G stay fixed while D learns
            x, z_real, fake, z = self._pairs(images, batch.generator)
        scores = self.discriminator(torch.cat([x, prepare(fake)]), torch.cat([z_real, z]))
        real_scores, fake_scores = scores.chunk(2)
        terms = (bigan_d_loss if discriminator else bigan_eg_loss)(real_scores, fake_scores)
        return dict(zip(SCORES, terms.unbind()))

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        x, z_real, fake, z = self._pairs(batch.images, batch.generator)
        return [Panel("real images x: the discriminator sees (x, E(x)) and must say 'real'", unprepare(x),
                      [f"|E(x)| {v:.1f}" for v in z_real.norm(dim=1).tolist()]),
                Panel("generated G(z) (the generator at this point): (G(z), z) must be called 'fake'", fake,
                      [f"|z| {v:.1f}" for v in z.norm(dim=1).tolist()])]

    @torch.no_grad()
    def outputs(self, images: torch.Tensor, generator: torch.Generator) -> list[Panel]:
        """Rows of ``outputs.png``: reconstructions G(E(x)) of the test images, and samples G(z)."""
        z_real = self._encode(prepare(resize(images, self.image_size)), generator)
        z = self._latents(len(images), generator)
        recon, samples = to_unit(self.generator(torch.cat([z_real, z]))).float().chunk(2)  # eval mode: running BN
        return [Panel("reconstructions G(E(x))", recon), Panel("samples G(z), z ~ N(0, I)", samples)]
