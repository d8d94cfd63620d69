"""Denoising autoencoder: the noise ops against per-image loops and their distributions, the squared error against a
float64 loop, a step against a per-image reference of the whole pipeline, bad options, and 2 processes vs 1."""

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.config import TrainConfig
from selfsup.data.ops.base import IMAGENET_MEAN, IMAGENET_STD, normalize
from selfsup.data.ops.noise import (
    add_noise,
    corrupt,
    mask_pixels,
    sample_gaussian_noise,
    sample_noise,
    sample_pixel_mask,
)
from selfsup.data.views import augmented
from selfsup.errors import UserError
from selfsup.losses.pixel import reconstruction_error
from selfsup.methods import Batch
from selfsup.methods.dae import DenoisingAutoencoder
from tests.helpers import assert_two_ranks_train_like_one


def test_gaussian_noise_is_added_and_clamped_image_by_image():
    g = torch.Generator().manual_seed(0)
    images, noise = torch.rand(4, 3, 5, 6, generator=g), sample_gaussian_noise(4, (3, 5, 6), 0.3, g)
    out = add_noise(images, noise)
    for b in range(4):
        for c in range(3):
            for y in range(5):
                for x in range(6):
                    assert float(out[b, c, y, x]) == min(1.0, max(0.0, float(images[b, c, y, x] + noise[b, c, y, x])))


def test_masking_noise_zeroes_every_channel_of_the_masked_pixels_image_by_image():
    g = torch.Generator().manual_seed(1)
    images, mask = torch.rand(4, 3, 5, 6, generator=g) + 0.1, sample_pixel_mask(4, 5, 6, 0.4, g)
    out = mask_pixels(images, mask)
    for b in range(4):
        expected = images[b].clone()
        for y in range(5):
            for x in range(6):
                if mask[b, 0, y, x]:
                    expected[:, y, x] = 0.0
        assert torch.equal(out[b], expected)
    assert torch.equal(corrupt("masking", images, mask), out)
    assert torch.equal(corrupt("gaussian", images, 0.1 * images), add_noise(images, 0.1 * images))


def test_the_mask_hides_each_pixel_with_probability_mask_ratio_independently():
    mask = sample_pixel_mask(400, 16, 16, 0.25, torch.Generator().manual_seed(2))
    assert mask.shape == (400, 1, 16, 16) and mask.dtype == torch.bool
    assert float(mask.double().mean()) == pytest.approx(0.25, abs=0.005)
    per_image = mask.double().mean((1, 2, 3))  # binomial(256, 0.25) / 256 per image: std 0.027
    assert float(per_image.std()) == pytest.approx((0.25 * 0.75 / 256) ** 0.5, rel=0.1)
    both = (mask[:, :, :, :-1] & mask[:, :, :, 1:]).double().mean()  # neighbours masked independently
    assert float(both) == pytest.approx(0.25**2, abs=0.004)
    again = sample_noise("masking", 400, (3, 16, 16), 0.25, torch.Generator().manual_seed(2))
    assert torch.equal(again, mask)  # the seed fixes it


def test_gaussian_noise_has_mean_zero_and_std_sigma_per_element():
    noise = sample_noise("gaussian", 200, (3, 16, 16), 0.2, torch.Generator().manual_seed(3))
    assert noise.shape == (200, 3, 16, 16)
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.002)
    assert float(noise.std()) == pytest.approx(0.2, rel=0.01)
    assert float((noise.abs() < 0.2).double().mean()) == pytest.approx(0.6827, abs=0.005)  # normal, not uniform
    assert float(noise.flatten(1).std(1).std()) < 0.01  # the same sigma for every sample


def test_the_loss_is_the_mean_squared_error_of_a_float64_loop():
    g = torch.Generator().manual_seed(4)
    out, target = torch.randn(2, 3, 4, 5, generator=g), torch.rand(2, 3, 4, 5, generator=g)
    total = 0.0
    for o, t in zip(out.double().flatten().tolist(), target.double().flatten().tolist()):
        total += (o - t) ** 2
    assert float(reconstruction_error(out, target, "l2")) == pytest.approx(total / out.numel(), rel=1e-6)


@pytest.mark.parametrize("noise", ["masking", "gaussian"])
def test_a_step_encodes_the_corrupted_view_and_regresses_the_clean_one(noise):
    torch.manual_seed(0)
    m = DenoisingAutoencoder(build_backbone("small", 8), 256, 8, decoder_dim=16, noise=noise, mask_ratio=0.3,
                             sigma=0.25)
    seen, made = [], []
    m.backbone.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    m.decoder.register_forward_hook(lambda mod, args, out: made.append(out))
    images = torch.randint(0, 256, (3, 3, 10, 10), dtype=torch.uint8)
    loss = m.training_step(Batch(images, None, torch.arange(3), torch.Generator().manual_seed(5), 0.0))
    g = torch.Generator().manual_seed(5)  # the reference draws in the same order: the view, then the noise
    clean = augmented(images, m.aug, 8, g)
    draws = torch.rand(3, 1, 8, 8, generator=g) if noise == "masking" else torch.randn(3, 3, 8, 8, generator=g)
    expected = clean.clone()
    for b in range(3):
        for y in range(8):
            for x in range(8):
                if noise == "masking" and draws[b, 0, y, x] < 0.3:
                    expected[b, :, y, x] = 0.0
                elif noise == "gaussian":
                    expected[b, :, y, x] = (clean[b, :, y, x] + 0.25 * draws[b, :, y, x]).clamp(0, 1)
    torch.testing.assert_close(seen[0], normalize(expected, IMAGENET_MEAN, IMAGENET_STD))
    reference = sum((o - t) ** 2 for o, t in zip(made[0].double().flatten().tolist(), clean.flatten().tolist()))
    assert float(loss.detach()) == pytest.approx(reference / clean.numel(), rel=1e-5)
    assert made[0].shape == (3, 3, 8, 8)


@pytest.mark.parametrize("args", [dict(noise="salt"), dict(mask_ratio=1.0), dict(mask_ratio=0.0), dict(sigma=0.0),
                                  dict(decoder_dim=0)])
def test_bad_options_are_refused_in_one_line(args):
    with pytest.raises(UserError, match="dae"):
        DenoisingAutoencoder(build_backbone("small", 8), 256, 8, **args)


def test_two_processes_train_the_denoising_autoencoder_like_one(tmp_path):
    # SGD: Adam (the default) divides by the gradients' magnitude, so the float rounding by which one and two
    # processes differ decides the sign of near-zero updates (a batch-norm bias, measured)
    cfg = TrainConfig(method="dae", data="digits", batch_size=32, image_size=8, steps=3, log_every=1,
                      optimizer="sgd", lr=0.05, method_args=dict(decoder_dim=16))
    assert_two_ranks_train_like_one(tmp_path, cfg)
