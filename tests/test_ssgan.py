"""SSGAN: two optimisers in alternating phases, the paper's losses, exact resume and 2 processes vs 1."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

import selfsup
from selfsup.backbones import build_backbone
from selfsup.config import TrainConfig
from selfsup.data import load_data
from selfsup.data.ops.rotate import rotations
from selfsup.data.views import augmented, prepare
from selfsup.errors import UserError
from selfsup.heads.generator import sample_latent, to_unit
from selfsup.losses.gan import hinge_d_loss, hinge_g_loss
from selfsup.methods import Batch
from selfsup.methods.ssgan import SSGAN
from tests.helpers import assert_same_state, assert_two_ranks_train_like_one

DIGITS = load_data("digits")
TINY = dict(generator_width=0.125, z_dim=16)


def cfg(**kw):
    base = dict(method="ssgan", data="digits", batch_size=32, image_size=16, steps=6, log_every=2,
                backbone_args=dict(width=0.125), method_args=TINY)
    return TrainConfig(**{**base, **kw})


def tiny(n_dis=2):
    torch.manual_seed(0)
    return SSGAN(build_backbone("sngan", 16, width=0.125), 16, 16, n_dis=n_dis, **TINY)


def test_every_discriminator_layer_is_spectrally_normalised_and_the_optimisers_split_the_parameters():
    m = tiny()
    layers = [x for x in (*m.backbone.modules(), m.real_fake, m.rotation)
              if isinstance(x, torch.nn.Conv2d | torch.nn.Linear)]
    assert layers and all(parametrize.is_parametrized(x, "weight") for x in layers)
    d, g = m.parameters_of("discriminator"), m.parameters_of("generator")
    assert {id(p) for p in d} | {id(p) for p in g} == {id(p) for p in m.parameters()}
    assert not {id(p) for p in d} & {id(p) for p in g}
    assert m.phases == ["discriminator", "discriminator", "generator"]


def test_the_phases_compute_the_papers_losses():
    """Discriminator phase k: hinge on its own real images (k, k + n_dis, ...) against fresh fakes, plus the
    rotation loss of the real images (weight 1); generator phase: hinge on fakes plus 0.2 x their rotation loss."""
    m = tiny().eval()  # no spectral-norm power iteration: the reference sees the same weights
    images = DIGITS.pretrain.images[:8]
    out = m.training_step(Batch(images, None, torch.arange(8), torch.Generator().manual_seed(3), 0.0, phase=1))
    g = torch.Generator().manual_seed(3)
    real = prepare(augmented(images[1::2], m.aug, 16, g))
    fake = prepare(to_unit(m.generator(sample_latent(4, 16, g))))
    rot, labels = rotations(real)
    feats = m.backbone(torch.cat([rot, fake]))
    adv = m.real_fake(feats).squeeze(1)
    torch.testing.assert_close(out["adversarial"], hinge_d_loss(adv[:4], adv[16:]))
    torch.testing.assert_close(out["rotation"], F.cross_entropy(m.rotation(feats[:16]), labels))
    out = m.training_step(Batch(images, None, torch.arange(8), torch.Generator().manual_seed(4), 0.0, phase=2))
    g = torch.Generator().manual_seed(4)
    rot, labels = rotations(prepare(to_unit(m.generator(sample_latent(8, 16, g)))))
    feats = m.backbone(rot)
    torch.testing.assert_close(out["adversarial"], hinge_g_loss(m.real_fake(feats[:8]).squeeze(1)))
    torch.testing.assert_close(out["rotation"], 0.2 * F.cross_entropy(m.rotation(feats), labels))


def test_bad_phase_counts_and_batches_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="n_dis .* must be at least 1"):
        selfsup.train(cfg(method_args={**TINY, "n_dis": 0}), tmp_path / "a", show_progress=False, data=DIGITS)
    with pytest.raises(UserError, match="must split into n_dis=3 equal parts"):
        selfsup.train(cfg(method_args={**TINY, "n_dis": 3}), tmp_path / "b", show_progress=False, data=DIGITS)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_training_writes_samples_and_resumes_exactly_mid_epoch(tmp_path):
    straight = selfsup.train(cfg(), tmp_path / "a", show_progress=False, data=DIGITS)
    assert (tmp_path / "a" / "samples.png").exists()
    assert torch.equal(straight.method.sample(4, seed=1), straight.method.sample(4, seed=1))
    selfsup.train(cfg(), tmp_path / "b", evaluate=False, show_progress=False, data=DIGITS, stop_at=3)
    resumed = selfsup.train(cfg(), resume=tmp_path / "b", evaluate=False, show_progress=False, data=DIGITS)
    assert_same_state(straight.method.state_dict(), resumed.method.state_dict())


def test_two_processes_train_the_gan_like_one(tmp_path):
    # SGD rather than Adam: Adam turns a gradient of rounding noise (a bias before batch norm, say) into a full
    # step in either direction, which hides what this test checks: the phases' gradients reduced over ranks
    sgd = dict(optimizer="sgd", lr=0.05, schedule="constant")
    assert_two_ranks_train_like_one(tmp_path, cfg(steps=4, **sgd, optimizers={"generator": sgd}))
