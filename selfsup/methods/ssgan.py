"""SSGAN: a GAN whose discriminator also predicts the rotation of real images, and whose generator is asked to
make images whose rotation it can predict (Chen, Zhai, Ritter, Lucic, Houlsby, "Self-Supervised GANs via
Auxiliary Rotation Loss", CVPR 2019)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from selfsup.data.ops.rotate import rotations
from selfsup.data.sources import Dataset
from selfsup.data.views import augmented, for_this_rank, prepare
from selfsup.distributed import world_size
from selfsup.errors import UserError
from selfsup.evaluate.pictures import save_image_grid
from selfsup.heads.generator import ResNetGenerator, generate, sample_latent, to_unit
from selfsup.losses.gan import hinge_d_loss, hinge_g_loss
from selfsup.methods.base import Batch, Method
from selfsup.methods.panels import Panel, unprepare

ADAM = dict(optimizer="adam", lr=2e-4, betas=(0.0, 0.999), weight_decay=0.0, schedule="constant", warmup_epochs=0.0)


def with_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al., ICLR 2018) on every convolution and linear layer, in place."""
    for m in list(module.modules()):
        if isinstance(m, nn.Conv2d | nn.Linear):
            spectral_norm(m)
    return module


class SSGAN(Method):
    """Discriminator = the backbone (the SNGAN ResNet trunk by default, spectrally normalised) with a real/fake
    and a 4-way rotation head; generator = the SNGAN ResNet generator. Hinge loss; the discriminator also
    classifies the four rotations of every real image (weight ``rotation_real``, the paper's beta = 1), the
    generator is rewarded for fakes whose rotations the discriminator recognises (``rotation_fake``, alpha =
    0.2). Adam (2e-4, betas 0 / 0.999) for both, constant rate. Each step runs ``n_dis`` discriminator phases,
    phase k on the batch's images k, k + n_dis, ... (so each sees its own real images, and a multi-process run
    splits them as one process does), then one generator phase on a full batch of fakes. The discriminator's
    trunk is what evaluation probes; the run folder gets ``samples.png`` (64 samples)."""

    name = "ssgan"
    paper = "Chen et al., Self-Supervised GANs via Auxiliary Rotation Loss, CVPR 2019"
    default_backbone = "sngan"
    optimizer_defaults = {"discriminator": ADAM, "generator": ADAM}
    augment_defaults = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "jitter_p": 0.0, "gray_p": 0.0}
    pictures = ("samples.png",)

    def __init__(self, *args, n_dis: int = 2, z_dim: int = 128, generator_width: float = 1.0,
                 rotation_real: float = 1.0, rotation_fake: float = 0.2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if n_dis < 1:
            raise UserError(f"ssgan: n_dis (discriminator phases per step) must be at least 1 (got {n_dis})")
        self.n_dis, self.z_dim = n_dis, z_dim
        self.rotation_real, self.rotation_fake = rotation_real, rotation_fake
        self.real_fake = nn.Linear(self.feat_dim, 1)
        self.rotation = nn.Linear(self.feat_dim, 4)
        with_spectral_norm(nn.ModuleList([self.backbone, self.real_fake, self.rotation]))
        self.generator = ResNetGenerator(z_dim, generator_width, self.image_size)
        self.phases = ["discriminator"] * n_dis + ["generator"]

    def parameters_of(self, optimizer: str) -> list[nn.Parameter]:
        if optimizer == "generator":
            return list(self.generator.parameters())
        return [p for m in (self.backbone, self.real_fake, self.rotation) for p in m.parameters()]

    def check_batch(self, global_batch: int) -> None:
        check_phase_split(self.name, global_batch, self.n_dis)

    def _fakes(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` generated images, normalised as the discriminator sees real ones; the latents are drawn for the
        global batch and each process keeps its rows (so N processes generate what one would)."""
        z = for_this_rank(lambda m: sample_latent(m, self.z_dim, generator), n)
        return prepare(to_unit(self.generator(z.to(self.real_fake.weight.device))))

    def _discriminate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        return self.real_fake(feats).squeeze(1).float(), self.rotation(feats).float()

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        if batch.phase < self.n_dis:  # discriminator: real vs fake, and the rotations of real images
            real = batch.images[batch.phase :: self.n_dis]
            n = len(real)
            rotated, labels = rotations(prepare(augmented(real, self.aug, self.image_size, batch.generator)))
            with torch.no_grad():
                fake = self._fakes(n, batch.generator)
            adv, rot = self._discriminate(torch.cat([rotated, fake]))
            return {"adversarial": hinge_d_loss(adv[:n], adv[4 * n :]),
                    "rotation": self.rotation_real * F.cross_entropy(rot[: 4 * n], labels)}
        n = len(batch.images)  # generator: fool the discriminator, with fakes whose rotation it can tell
        rotated, labels = rotations(self._fakes(n, batch.generator))
        adv, rot = self._discriminate(rotated)
        return {"adversarial": hinge_g_loss(adv[:n]), "rotation": self.rotation_fake * F.cross_entropy(rot, labels)}

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        n = len(batch.images)
        rotated, labels = rotations(prepare(augmented(batch.images, self.aug, self.image_size, batch.generator)))
        pick = torch.arange(n, device=rotated.device) + n * (torch.arange(n, device=rotated.device) % 4)
        return [Panel("real images, rotated: the discriminator tells real from fake and the rotation",
                      unprepare(rotated[pick]), [f"real, {90 * int(labels[i])} deg" for i in pick.tolist()]),
                Panel("generated images (the generator at this point): 'fake' for the discriminator",
                      unprepare(self._fakes(n, batch.generator)))]

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` generated images as uint8 ``(n, 3, H, W)`` (generator in eval mode, latents from ``seed``)."""
        return generate(self.generator, n, seed)

    def report(self, out: Path, data: Dataset) -> dict[str, float]:
        save_image_grid(self.sample(64), out / "samples.png", nrow=8, title=f"{self.name}: 64 generated samples")
        return {}


def check_phase_split(method: str, global_batch: int, n_dis: int) -> None:
    """Refuse a batch whose per-process share does not split into ``n_dis`` discriminator phases (GANs here)."""
    if (global_batch // world_size()) % n_dis:
        raise UserError(f"{method}: each process's batch ({global_batch // world_size()}) must split into n_dis="
                        f"{n_dis} equal parts, one per discriminator phase")
