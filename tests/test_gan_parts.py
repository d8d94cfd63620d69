"""The SSGAN parts: ResNet generator, adversarial losses, Fréchet distance, picture grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup.errors import UserError
from selfsup.evaluate.fid import feature_statistics, fid, frechet_distance
from selfsup.evaluate.pictures import save_image_grid
from selfsup.heads.generator import ResNetGenerator, UpBlock, sample_latent, to_uint8, to_unit
from selfsup.losses.gan import hinge_d_loss, hinge_g_loss, ns_d_loss, ns_g_loss

# ---------------------------------------------------------------- generator


def _expected_parameters(z: int, c: int, blocks: int, out: int = 3) -> int:
    """Count from the architecture table: linear, per block 2 conv3x3 + conv1x1 (no biases: each feeds a batch
    norm) + 2 BN, final BN + conv3x3."""
    linear = z * 16 * c + 16 * c
    block = 2 * 9 * c * c + c * c + 2 * 2 * c
    return linear + blocks * block + 2 * c + 9 * c * out + out


def test_generator_parameter_count_matches_the_architecture():
    assert sum(p.numel() for p in ResNetGenerator().parameters()) == 4_274_435  # SNGAN: ~4.3 M for CIFAR-10
    for size, width, channels, blocks in ((32, 1.0, 256, 3), (16, 1.0, 256, 2), (64, 1.0, 256, 4), (32, 0.5, 128, 3)):
        count = sum(p.numel() for p in ResNetGenerator(width=width, image_size=size).parameters())
        print(f"ResNetGenerator(z_dim=128, width={width}, image_size={size}): {count:,} parameters")
        assert count == _expected_parameters(128, channels, blocks)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_generator_output_shape_and_range(size):
    g = ResNetGenerator(z_dim=16, width=1 / 8, image_size=size)
    z = sample_latent(4, 16, torch.Generator().manual_seed(0)) * 5  # large z: tanh must still bound the output
    x = g(z)
    assert x.shape == (4, 3, size, size)
    assert x.abs().max() <= 1 and x.std() > 0.01  # bounded, and not a constant picture
    unit, stored = to_unit(x), to_uint8(x)
    assert unit.min() >= 0 and unit.max() <= 1
    assert stored.dtype == torch.uint8
    assert torch.equal(stored, torch.round((x + 1) / 2 * 255).to(torch.uint8))


@pytest.mark.parametrize("size", [4, 12, 24, 0])
def test_generator_rejects_sizes_that_are_not_4_times_a_power_of_two(size):
    with pytest.raises(UserError):
        ResNetGenerator(image_size=size)


def test_up_block_matches_the_upsample_then_conv_definition():
    """The shortcut's conv1x1 runs before the upsampling; the paper's order (upsample, then conv) is the reference."""
    torch.manual_seed(0)
    block = UpBlock(8, 6).eval()
    for bn in (block.bn1, block.bn2):  # non-trivial running statistics and affine parameters
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    x = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    block.double()

    def up(t):
        return t.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)

    def bn(m, t):
        shape = (1, -1, 1, 1)
        return (t - m.running_mean.view(shape)) / torch.sqrt(m.running_var.view(shape) + m.eps) * \
            m.weight.view(shape) + m.bias.view(shape)

    h = F.conv2d(up(torch.relu(bn(block.bn1, x))), block.conv1.weight, block.conv1.bias, padding=1)
    h = F.conv2d(torch.relu(bn(block.bn2, h)), block.conv2.weight, block.conv2.bias, padding=1)
    expected = h + F.conv2d(up(x), block.shortcut.weight, block.shortcut.bias)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)


def test_generator_backward_reaches_every_parameter():
    g = ResNetGenerator(z_dim=16, width=1 / 16, image_size=16)
    g(sample_latent(4, 16, torch.Generator().manual_seed(1))).square().mean().backward()
    for name, p in g.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_generator_fits_a_fixed_batch():
    """50 Adam steps on fixed codes: the squared error to a fixed target batch must fall by a large factor."""
    torch.manual_seed(0)
    g = ResNetGenerator(z_dim=16, width=1 / 16, image_size=8)
    z = sample_latent(8, 16, torch.Generator().manual_seed(2))
    target = F.interpolate(torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1, size=8,
                           mode="bilinear", align_corners=False)
    opt = torch.optim.Adam(g.parameters(), lr=2e-3)
    losses = []
    for _ in range(50):
        loss = F.mse_loss(g(z), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])


def test_sample_latent_is_seeded_standard_normal():
    z = sample_latent(4000, 64, torch.Generator().manual_seed(5))
    assert z.shape == (4000, 64) and z.dtype == torch.float32
    assert torch.equal(z, sample_latent(4000, 64, torch.Generator().manual_seed(5)))
    assert not torch.equal(z, sample_latent(4000, 64, torch.Generator().manual_seed(6)))
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01  # 256 000 draws: 5 sigma < 0.01
    cov = torch.cov(z.T)
    assert (cov - torch.eye(64)).abs().max() < 0.1  # independent coordinates


# ---------------------------------------------------------------- losses


def _loop_hinge_d(real, fake):
    return sum(max(0.0, 1 - r) for r in real) / len(real) + sum(max(0.0, 1 + f) for f in fake) / len(fake)


def _loop_ns_d(real, fake):
    def log_sigmoid(v):
        return -math.log1p(math.exp(-v))

    return -sum(log_sigmoid(r) for r in real) / len(real) - sum(math.log1p(-1 / (1 + math.exp(-f))) for f in fake) \
        / len(fake)


def _logits(n, seed):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


def test_hinge_losses_match_the_formula():
    real, fake = _logits(37, 0), _logits(23, 1)  # different sizes: each term is its own mean
    r, f = real.tolist(), fake.tolist()
    assert hinge_d_loss(real, fake).item() == pytest.approx(_loop_hinge_d(r, f), rel=1e-6)
    assert hinge_g_loss(fake).item() == pytest.approx(-sum(f) / len(f), rel=1e-6, abs=1e-7)
    assert hinge_d_loss(torch.tensor([2.0, 1.5]), torch.tensor([-3.0])).item() == 0  # beyond both margins


def test_non_saturating_losses_match_the_formula():
    real, fake = _logits(31, 2), _logits(17, 3)
    r, f = real.tolist(), fake.tolist()
    assert ns_d_loss(real, fake).item() == pytest.approx(_loop_ns_d(r, f), rel=1e-6)
    expected_g = sum(math.log1p(math.exp(-v)) for v in f) / len(f)
    assert ns_g_loss(fake).item() == pytest.approx(expected_g, rel=1e-6)


def test_gan_loss_gradients_push_logits_the_right_way():
    """The discriminator raises real logits and lowers fake ones (only inside the hinge margin); the generator
    raises fake logits. Gradient descent moves a logit against its gradient."""
    real = torch.tensor([-2.0, 0.5, 3.0], requires_grad=True)  # the last is beyond the margin
    fake = torch.tensor([-3.0, -0.5, 2.0, 0.0], requires_grad=True)  # the first is beyond the margin
    hinge_d_loss(real, fake).backward()
    torch.testing.assert_close(real.grad, torch.tensor([-1 / 3, -1 / 3, 0.0]))
    torch.testing.assert_close(fake.grad, torch.tensor([0.0, 0.25, 0.25, 0.25]))
    fake.grad = None
    hinge_g_loss(fake).backward()
    torch.testing.assert_close(fake.grad, torch.full((4,), -0.25))

    real.grad, fake.grad = None, None
    ns_d_loss(real, fake).backward()
    torch.testing.assert_close(real.grad, -torch.sigmoid(-real.detach()) / 3)
    torch.testing.assert_close(fake.grad, torch.sigmoid(fake.detach()) / 4)
    assert (real.grad < 0).all() and (fake.grad > 0).all()
    fake.grad = None
    ns_g_loss(fake).backward()
    torch.testing.assert_close(fake.grad, -torch.sigmoid(-fake.detach()) / 4)


def test_gan_losses_run_in_float32_under_autocast():
    real, fake = _logits(8, 4).bfloat16(), _logits(8, 5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for value in (hinge_d_loss(real, fake), hinge_g_loss(fake), ns_d_loss(real, fake), ns_g_loss(fake)):
            assert value.dtype == torch.float32


# ---------------------------------------------------------------- Fréchet distance


def _random_covariance(d, seed, rank=None):
    a = torch.randn(d, rank or d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / (rank or d)


def _scipy_reference(mu1, s1, mu2, s2, eps=0.0):
    """Heusel et al.'s formula with scipy's general matrix square root of the product (as the TTUR code)."""
    mu1, s1, mu2, s2 = (t.numpy() for t in (mu1, s1, mu2, s2))
    offset = np.eye(len(s1)) * eps
    covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset)).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _features(n, d, seed, shift=0.0):
    """Samples of one correlated Gaussian (a fixed mixing matrix), drawn with ``seed``, moved by ``shift``."""
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(d)) / math.sqrt(d)
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) @ mix + shift


def test_feature_statistics_match_numpy():
    x = _features(300, 12, 0)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == sigma.dtype == torch.float64
    np.testing.assert_allclose(mu.numpy(), x.double().numpy().mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sigma.numpy(), np.cov(x.double().numpy(), rowvar=False), rtol=1e-10, atol=1e-14)


def test_fid_of_a_set_with_itself_is_zero():
    x = _features(500, 32, 1)
    assert abs(fid(x, x)) < 1e-8


def test_frechet_distance_of_diagonal_gaussians_matches_the_closed_form():
    g = torch.Generator().manual_seed(2)
    mu1, mu2 = torch.randn(20, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
    v1, v2 = (torch.rand(20, generator=g, dtype=torch.float64) * 3 + 0.01 for _ in range(2))
    expected = sum((a - b) ** 2 + s + t - 2 * math.sqrt(s * t)
                   for a, b, s, t in zip(mu1.tolist(), mu2.tolist(), v1.tolist(), v2.tolist()))
    assert frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_scipy_and_is_symmetric():
    g = torch.Generator().manual_seed(3)
    mu1, mu2 = torch.randn(48, generator=g, dtype=torch.float64), torch.randn(48, generator=g, dtype=torch.float64)
    s1, s2 = _random_covariance(48, 4), _random_covariance(48, 5)
    value = frechet_distance(mu1, s1, mu2, s2)
    assert value == pytest.approx(_scipy_reference(mu1, s1, mu2, s2), rel=1e-8)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(value, rel=1e-10)
    a, b = _features(400, 16, 6), _features(300, 16, 7)
    assert fid(a, b) == pytest.approx(fid(b, a), rel=1e-10)


def test_frechet_distance_of_singular_covariances_matches_the_offset_reference():
    """Fewer samples than dimensions: rank-deficient covariances, where the reference adds 1e-6 I."""
    mu = torch.zeros(64, dtype=torch.float64)
    s1, s2 = _random_covariance(64, 8, rank=20), _random_covariance(64, 9, rank=20)
    value = frechet_distance(mu, s1, mu, s2)
    assert math.isfinite(value) and value > 0
    assert value == pytest.approx(_scipy_reference(mu, s1, mu, s2, eps=1e-6), rel=1e-4)


def test_fid_grows_with_a_shift():
    a, b = _features(2000, 8, 10), _features(2000, 8, 11)  # two samples of one distribution
    shift = torch.full((8,), 0.5)
    base, moved = fid(a, b), fid(a, b + shift)
    assert base < 0.1
    # a translation leaves the covariances alone and changes only the mean term ||mu_a - mu_b - shift||^2
    d = (a.double().mean(0) - b.double().mean(0)).float()
    assert moved == pytest.approx(base + float((d - shift).square().sum() - d.square().sum()), rel=1e-5)
    assert moved > base + 1.5  # ||shift||^2 = 2, up to sampling noise in the means


def test_fid_rejects_mismatched_features():
    with pytest.raises(UserError):
        fid(torch.randn(10, 4), torch.randn(10, 5))
    with pytest.raises(UserError):
        fid(torch.randn(1, 4), torch.randn(10, 4))


# ---------------------------------------------------------------- picture grids


def _batch(n, h, w, seed=0):
    return torch.randint(0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _cell(picture, x0, y0, h, w, scale):
    return picture[y0 : y0 + h * scale, x0 : x0 + w * scale]


def _enlarged(image, scale):
    """Per-image reference of the nearest enlargement: every pixel a scale x scale block."""
    return np.kron(image.permute(1, 2, 0).numpy(), np.ones((scale, scale, 1), dtype=np.uint8))


def test_image_grid_layout_and_cell_pixels(tmp_path):
    images, scale, pad = _batch(5, 8, 6), 4, 2
    save_image_grid(images, tmp_path / "grid.png", nrow=3, scale=scale, pad=pad)
    picture = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    cw, ch = 6 * scale, 8 * scale
    assert picture.shape == (2 * ch + 3 * pad, 3 * cw + 4 * pad, 3)
    for i in range(5):
        r, c = divmod(i, 3)
        cell = _cell(picture, pad + c * (cw + pad), pad + r * (ch + pad), 8, 6, scale)
        np.testing.assert_array_equal(cell, _enlarged(images[i], scale))
    assert (_cell(picture, pad + 2 * (cw + pad), pad + ch + pad, 8, 6, scale) == 255).all()  # no sixth image


def test_image_grid_of_floats_matches_uint8_and_enlarges_32px(tmp_path):
    images = _batch(4, 32, 32, seed=1)
    save_image_grid(images, tmp_path / "u8.png", nrow=2)
    save_image_grid(images.float() / 255, tmp_path / "f.png", nrow=2)
    u8, f = (np.asarray(Image.open(tmp_path / p)) for p in ("u8.png", "f.png"))
    np.testing.assert_array_equal(u8, f)
    assert u8.shape[1] == 2 * 96 + 3 * 2  # default: 32 px enlarged 3x to 96 px cells


def test_image_grid_with_title_and_labels_keeps_cells_exact(tmp_path):
    images, scale, pad = _batch(4, 8, 8, seed=2), 3, 2
    save_image_grid(images, tmp_path / "plain.png", nrow=2, scale=scale, pad=pad)
    save_image_grid(images, tmp_path / "title.png", nrow=2, scale=scale, pad=pad, title="samples")
    save_image_grid(images, tmp_path / "both.png", nrow=2, scale=scale, pad=pad, title="samples",
                    labels=["input", "output", "input", "a long caption that does not fit"])
    plain, titled, both = (np.asarray(Image.open(tmp_path / f"{p}.png")) for p in ("plain", "title", "both"))
    banner = titled.shape[0] - plain.shape[0]
    caption = (both.shape[0] - titled.shape[0]) // 2  # two rows
    assert banner > 0 and caption > 0 and both.shape[1] == plain.shape[1]
    assert (titled[:banner] < 128).any()  # the title is drawn
    for i in range(4):
        r, c = divmod(i, 2)
        x0, y0 = pad + c * (8 * scale + pad), banner + pad + r * (8 * scale + caption + pad)
        np.testing.assert_array_equal(_cell(both, x0, y0, 8, 8, scale), _enlarged(images[i], scale))
        assert (both[y0 + 8 * scale : y0 + 8 * scale + caption, x0 : x0 + 8 * scale] < 128).any()  # caption drawn


def test_image_grid_rejects_bad_input(tmp_path):
    with pytest.raises(UserError, match="to_unit"):
        save_image_grid(torch.rand(2, 3, 8, 8) * 2 - 1, tmp_path / "g.png", nrow=2)
    with pytest.raises(UserError):
        save_image_grid(_batch(2, 8, 8), tmp_path / "g.png", nrow=2, labels=["one"])
    with pytest.raises(UserError):
        save_image_grid(_batch(2, 8, 8)[:, :2], tmp_path / "g.png", nrow=2)
    with pytest.raises(UserError):
        save_image_grid(_batch(2, 8, 8), tmp_path / "g.gif", nrow=2)
