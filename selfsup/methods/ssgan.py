"""SSGAN: a GAN whose discriminator also predicts the rotation of real images, and whose generator is asked to
make images whose rotation it can predict (Chen, Zhai, Ritter, Lucic, Houlsby, "Self-Supervised GANs via
Auxiliary Rotation Loss", CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.ops.rotate import rotations
from selfsup.data.views import augmented, for_this_rank, prepare
from selfsup.heads.generator import ResNetGenerator, sample_latent, to_unit
from selfsup.losses.gan import hinge_d_loss, hinge_g_loss
from selfsup.methods.base import Batch
from selfsup.methods.gan import GAN, SNGAN_ADAM, with_spectral_norm
from selfsup.methods.panels import Panel, unprepare


class SSGAN(GAN):
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
    optimizer_defaults = {"discriminator": SNGAN_ADAM, "generator": SNGAN_ADAM}
    augment_defaults = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "jitter_p": 0.0, "gray_p": 0.0}

    def __init__(self, *args, n_dis: int = 2, z_dim: int = 128, generator_width: float = 1.0,
                 rotation_real: float = 1.0, rotation_fake: float = 0.2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.set_phases(n_dis)
        self.z_dim = z_dim
        self.rotation_real, self.rotation_fake = rotation_real, rotation_fake
        self.real_fake = nn.Linear(self.feat_dim, 1)
        self.rotation = nn.Linear(self.feat_dim, 4)
        with_spectral_norm(nn.ModuleList([self.backbone, self.real_fake, self.rotation]))
        self.generator = ResNetGenerator(z_dim, generator_width, self.image_size)

    def parameters_of(self, optimizer: str) -> list[nn.Parameter]:
        if optimizer == "generator":
            return list(self.generator.parameters())
        return [p for m in (self.backbone, self.real_fake, self.rotation) for p in m.parameters()]

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
