"""Colourisation machinery (Zhang et al., ECCV 2016): Lab conversion against skimage image by image, the
quantised ab space and the class-rebalanced loss against slow float64 references written from the paper."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from skimage import color
from torch.testing import assert_close

from selfsup.data.ops import ab as AB
from selfsup.data.ops.lab import lab_to_rgb, rgb_to_lab
from selfsup.errors import UserError
from selfsup.losses.colour import colorization_loss

GRID = 10.0
SIGMA = 5.0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _skimage(fn, batch: torch.Tensor) -> torch.Tensor:
    """``fn`` (rgb2lab or lab2rgb) image by image on a (B, 3, H, W) batch, in float64."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lab2rgb warns when it clips negative Z
        out = [fn(img.permute(1, 2, 0).double().numpy()) for img in batch]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def _edge_colours() -> torch.Tensor:
    """Black, white, primaries, secondaries, greys and values at the sRGB curve's threshold, as a 1 x N image."""
    colours = [(0, 0, 0), (1, 1, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1), (1, 0, 1), (1, 1, 0),
               (0.25, 0.25, 0.25), (0.5, 0.5, 0.5), (0.75, 0.75, 0.75), (0.04045, 0.04045, 0.04045),
               (0.04, 0.05, 0.03), (1e-4, 0, 0), (0.5, 0, 0), (0, 0.2, 0.9)]
    return torch.tensor(colours, dtype=torch.float32).T[None, :, None, :]


def _random_ab(seed: int, batch: int = 2, height: int = 3, width: int = 4) -> torch.Tensor:
    """ab maps: mostly colours of random images, plus a few arbitrary values up to +-120 (outside the gamut)."""
    ab = rgb_to_lab(torch.rand(batch, 3, height, width, generator=_gen(seed)))[:, 1:]
    ab[:, :, 0, :2] = torch.rand(batch, 2, 2, generator=_gen(seed + 1)) * 240 - 120
    return ab


# ------------------------------------------------------------------------------------------ Lab


@pytest.mark.parametrize("shape", [(4, 3, 16, 16), (2, 3, 7, 11)])
def test_rgb_to_lab_matches_skimage_per_image(shape):
    x = torch.rand(shape, generator=_gen(shape[-1]))
    lab = rgb_to_lab(x)
    assert lab.dtype == torch.float32
    assert_close(lab.double(), _skimage(color.rgb2lab, x), atol=1e-4, rtol=0)


def test_rgb_to_lab_matches_skimage_on_edge_colours():
    x = _edge_colours()
    lab = rgb_to_lab(x)
    assert_close(lab.double(), _skimage(color.rgb2lab, x), atol=1e-4, rtol=0)
    assert_close(lab[0, 0, 0, :2], torch.tensor([0.0, 100.0]), atol=1e-4, rtol=0)  # black and white L
    greys = lab[0, 1:, 0, 8:12]
    # greys are neutral up to the 5th digit of skimage's rounded matrix and white point
    assert greys.abs().max() < 1e-2


def test_lab_to_rgb_matches_skimage_per_image_including_out_of_gamut():
    g = _gen(3)
    lab = torch.stack([torch.rand(3, 12, 12, generator=g) * 100,
                       torch.rand(3, 12, 12, generator=g) * 256 - 128,
                       torch.rand(3, 12, 12, generator=g) * 256 - 128], 1)  # many colours outside sRGB
    rgb = lab_to_rgb(lab)
    assert rgb.dtype == torch.float32 and rgb.min() >= 0 and rgb.max() <= 1
    assert_close(rgb.double(), _skimage(color.lab2rgb, lab), atol=1e-4, rtol=0)


def test_round_trip_and_float64_and_bf16_autocast():
    x = torch.cat([torch.rand(1, 3, 1, 64, generator=_gen(4)), _edge_colours()], -1)
    assert_close(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-5, rtol=0)
    lab64 = rgb_to_lab(x.double())
    assert lab64.dtype == torch.float64
    assert_close(lab64, _skimage(color.rgb2lab, x), atol=1e-9, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside, back = rgb_to_lab(x), lab_to_rgb(rgb_to_lab(x))
    assert inside.dtype == back.dtype == torch.float32
    assert_close(inside, rgb_to_lab(x), atol=0, rtol=0)
    assert_close(back, lab_to_rgb(rgb_to_lab(x)), atol=0, rtol=0)


def test_single_images_work_with_channels_at_dim_minus_3():
    x = torch.rand(2, 3, 5, 6, generator=_gen(5))
    assert_close(rgb_to_lab(x[1]), rgb_to_lab(x)[1], atol=1e-4, rtol=0)  # another matmul path


# ------------------------------------------------------------------------------------------ bins


def _keys(ab: torch.Tensor) -> set[tuple[int, int]]:
    """The lattice cells (i, j) that (N, 2) ab values round to."""
    return {tuple(c) for c in torch.unique(torch.round(ab / GRID).long(), dim=0).tolist()}


def _flat(ab: torch.Tensor) -> torch.Tensor:
    """A flat index of the lattice cell of each (N, 2) ab value, for lookup tables."""
    cell = torch.round(ab / GRID).long() + 20
    return cell[:, 0] * 41 + cell[:, 1]


def test_gamut_bins_are_the_lattice_cells_of_the_srgb_gamut():
    bins = AB.ab_bins(GRID)
    full = AB.ab_bins(GRID, gamut=False)
    # 262: the in-gamut cells of skimage's rgb2lab on the RGB cube's faces sampled at 2048 x 2048 (a separate
    # run; 8-bit colours reach 261 of them); Zhang et al. report 313 with an unpublished, looser criterion
    assert bins.shape == (262, 2) and full.shape == (529, 2)
    assert torch.equal(bins, torch.round(bins / GRID) * GRID)
    keys = [tuple(k) for k in (bins / GRID).long().tolist()]
    assert keys == sorted(set(keys))  # distinct, sorted by a then b
    assert set(keys) <= _keys(full)
    assert full.abs().max() == 110


def test_every_gamut_bin_is_reached_by_an_srgb_colour():
    """A witness per bin: the face colour whose ab is nearest the centre (our conversion), checked with skimage."""
    bins = AB.ab_bins(GRID)
    colours = torch.cat([face.flatten(1).T for face in AB._cube_faces(512)])
    ab = rgb_to_lab(colours.T[:, None, :])[1:, 0].T
    table = torch.full((41 * 41,), -1).index_put_((_flat(bins),), torch.arange(len(bins)))
    owner = table[_flat(ab)]
    assert (owner >= 0).all()  # every face colour falls in a bin
    offset = (ab - bins[owner]).abs().amax(1)  # Chebyshev distance to its bin's centre
    best = torch.full((len(bins),), math.inf).scatter_reduce(0, owner, offset, "amin")
    witness = torch.full((len(bins),), -1).scatter_(0, owner[offset == best[owner]],
                                                    torch.nonzero(offset == best[owner]).squeeze(1))
    assert (witness >= 0).all()
    reference = _skimage(color.rgb2lab, colours[witness].T[None, :, None, :])[0, 1:, 0].T
    assert _keys(reference) == _keys(bins)


def test_gamut_bins_hold_every_srgb_colour():
    g = _gen(6)
    inside = torch.rand(3, 1, 40_000, generator=g)
    faces = torch.rand(3, 1, 20_000, generator=g)
    faces[torch.randint(0, 3, (20_000,), generator=g), 0, torch.arange(20_000)] = \
        torch.randint(0, 2, (20_000,), generator=g).float()  # one channel at 0 or 1: the cube's surface
    eight_bit = torch.randint(0, 256, (3, 1, 40_000), generator=g).float() / 255
    colours = torch.cat([inside, faces, eight_bit], -1)
    ab = _skimage(color.rgb2lab, colours[None])[0, 1:, 0].T
    assert _keys(ab) <= _keys(AB.ab_bins(GRID))


def test_bad_arguments_raise_user_errors():
    with pytest.raises(UserError):
        AB.ab_bins(0)
    with pytest.raises(UserError):
        AB.soft_encode(_random_ab(0), AB.ab_bins(), k=0)
    with pytest.raises(UserError):
        AB.rebalance_weights(torch.ones(4) / 4, lam=1.5)
    with pytest.raises(UserError):
        AB.rebalance_weights(torch.tensor([0.5, 0.5, 0.0]), lam=0.0)
    with pytest.raises(UserError):
        AB.annealed_mean(torch.zeros(1, 3, 1, 1), torch.zeros(3, 2), temperature=0)


# ------------------------------------------------------------------------------------------ soft encoding


def _soft_encode_reference(ab: torch.Tensor, bins: torch.Tensor, k: int, sigma: float) -> torch.Tensor:
    """Pixel by pixel in float64: the k nearest bins, weights exp(-d^2 / 2 sigma^2) normalised to sum 1."""
    batch, _, height, width = ab.shape
    out = torch.zeros(batch, len(bins), height, width, dtype=torch.float64)
    centres = bins.double()
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                d = (centres - ab[b, :, i, j].double()).norm(dim=1)
                nearest = torch.argsort(d)[:k]
                w = torch.exp(-d[nearest] ** 2 / (2 * sigma**2))
                out[b, nearest, i, j] = w / w.sum()
    return out


@pytest.mark.parametrize("k", [1, 5])
def test_soft_encode_matches_per_pixel_reference(k, monkeypatch):
    bins, ab = AB.ab_bins(GRID), _random_ab(7)
    expected = _soft_encode_reference(ab, bins, k, SIGMA)
    z = AB.soft_encode(ab, bins, k=k, sigma=SIGMA)
    assert z.shape == (2, len(bins), 3, 4) and z.dtype == torch.float32
    assert_close(z.double(), expected, atol=1e-5, rtol=0)
    monkeypatch.setattr(AB, "_CHUNK", 5)  # blocks that split images and rows
    assert_close(AB.soft_encode(ab, bins, k=k, sigma=SIGMA), z, atol=1e-6, rtol=0)
    assert ((z > 0).sum(1) == k).all()


def test_nearest_bins_finds_the_nearest_centre():
    bins, ab = AB.ab_bins(GRID), _random_ab(8)
    dist, index = AB.nearest_bins(ab, bins)
    d = (ab.double().movedim(1, -1)[..., None, :] - bins.double()).norm(dim=-1)  # (B, H, W, Q)
    assert torch.equal(index[:, 0], d.argmin(-1))
    assert_close(dist[:, 0].double(), d.amin(-1) ** 2, atol=5e-3, rtol=0)


# ------------------------------------------------------------------------------------------ prior, rebalancing


def _prior_reference(samples: torch.Tensor, bins: torch.Tensor, sigma: float) -> torch.Tensor:
    """Nearest-bin counts by loop, then each bin's share spread over the bins by a normalised Gaussian kernel."""
    q = len(bins)
    centres = bins.double()
    counts = torch.zeros(q, dtype=torch.float64)
    for s in samples.double():
        counts[(centres - s).norm(dim=1).argmin()] += 1
    p = counts / counts.sum()
    prior = torch.zeros(q, dtype=torch.float64)
    for src in range(q):
        if p[src] == 0:
            continue
        kernel = torch.tensor([math.exp(-((centres[src] - centres[dst]) ** 2).sum().item() / (2 * sigma**2))
                               for dst in range(q)], dtype=torch.float64)
        prior += p[src] * kernel / kernel.sum()
    return prior


def test_ab_prior_matches_loop_reference_for_samples_and_maps():
    bins, ab = AB.ab_bins(GRID), _random_ab(9, batch=3, height=4, width=5)
    samples = ab.movedim(1, -1).reshape(-1, 2)
    expected = _prior_reference(samples, bins, SIGMA)
    prior = AB.ab_prior(ab, bins, SIGMA)
    assert prior.dtype == torch.float32 and abs(prior.sum().item() - 1) < 1e-6
    assert_close(prior.double(), expected, atol=1e-7, rtol=1e-5)
    assert_close(AB.ab_prior(samples, bins, SIGMA), prior, atol=0, rtol=0)
    halves = AB.ab_histogram(ab[:1], bins) + AB.ab_histogram(ab[1:], bins)
    assert torch.equal(halves, AB.ab_histogram(ab, bins))  # counts add up over batches
    # a narrow kernel leaves the empirical distribution
    assert_close(AB.ab_prior(samples, bins, 0.5).double(), AB.ab_histogram(samples, bins).double() / len(samples),
                 atol=1e-7, rtol=0)


def test_rebalance_weights_follow_eq_4_and_its_limits():
    prior = AB.ab_prior(_random_ab(10, batch=4, height=8, width=8), AB.ab_bins(GRID), SIGMA).double()
    q = len(prior)
    for lam in (0.0, 0.5, 0.9):
        w = AB.rebalance_weights(prior, lam).double()
        assert abs((prior * w).sum().item() - 1) < 1e-5  # 1 on expectation over the prior
        mixture = (1 - lam) * prior + lam / q
        expected = 1 / mixture
        assert_close(w, expected / (prior * expected).sum(), rtol=1e-5, atol=0)
    assert_close(AB.rebalance_weights(prior, 1.0), torch.ones(q), atol=1e-6, rtol=0)
    assert_close(AB.rebalance_weights(prior, 0.0).double(), 1 / (q * prior), rtol=1e-5, atol=0)


# ------------------------------------------------------------------------------------------ decoding, grayscale


def _annealed_reference(logits: torch.Tensor, bins: torch.Tensor, t: float) -> torch.Tensor:
    """Eq. 5 literally: f_T(z) = exp(log z / T) / sum exp(log z / T) of z = softmax(logits), then E[bin]."""
    z = torch.softmax(logits.double(), 1)
    f = torch.exp(torch.log(z) / t)
    f = f / f.sum(1, keepdim=True)
    return torch.einsum("bqhw,qc->bchw", f, bins.double())


def test_annealed_mean_matches_eq_5_and_its_limits():
    bins = AB.ab_bins(GRID)
    logits = torch.randn(2, len(bins), 3, 4, generator=_gen(11)) * 2
    assert_close(AB.annealed_mean(logits, bins).double(), _annealed_reference(logits, bins, 0.38),
                 atol=1e-4, rtol=1e-5)
    plain = torch.einsum("bqhw,qc->bchw", torch.softmax(logits, 1), bins)
    assert_close(AB.annealed_mean(logits, bins, 1.0), plain, atol=1e-4, rtol=0)
    top = logits.argmax(1)
    peaked = logits.scatter_add(1, top[:, None], torch.ones_like(logits[:, :1]))  # margin of at least 1
    mode = bins[top].permute(0, 3, 1, 2)
    assert_close(AB.annealed_mean(peaked, bins, 1e-2), mode, atol=1e-4, rtol=0)


def test_near_grayscale_uses_a_per_pixel_threshold_on_a_and_b():
    gray = torch.rand(4, 1, 6, 6, generator=_gen(12)).expand(4, 3, 6, 6)
    ab = rgb_to_lab(gray)[:, 1:].clone()
    assert AB.near_grayscale(ab).all()
    ab[1, 0, 2, 3] = 5.5  # one pixel with |a| above 5
    ab[2, 1, 0, 0] = -4.9  # below the threshold
    ab[3] = rgb_to_lab(torch.rand(1, 3, 6, 6, generator=_gen(13)))[0, 1:]
    assert AB.near_grayscale(ab).tolist() == [True, False, True, False]


# ------------------------------------------------------------------------------------------ loss


def _loss_reference(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                    mask: torch.Tensor | None) -> torch.Tensor:
    """Eqs. 2-3 pixel by pixel in float64: -v(Z) sum_q Z_q log Zhat_q, v = weights[argmax Z], / (B H W)."""
    batch, _, height, width = logits.shape
    total = logits.new_zeros(())
    for b in range(batch):
        if mask is not None and not mask[b]:
            continue
        for i in range(height):
            for j in range(width):
                z = targets[b, :, i, j].double()
                log_zhat = torch.log_softmax(logits[b, :, i, j], 0)
                total = total - weights[z.argmax()].double() * (z * log_zhat).sum()
    return total / (batch * height * width)


@pytest.mark.parametrize("masked", [False, True])
def test_colorization_loss_matches_loop_reference(masked):
    bins = AB.ab_bins(GRID)
    ab = _random_ab(14, batch=3, height=3, width=2)
    targets = AB.soft_encode(ab, bins)
    weights = AB.rebalance_weights(AB.ab_prior(ab, bins))
    logits = torch.randn(3, len(bins), 3, 2, generator=_gen(15))
    mask = torch.tensor([True, False, True]) if masked else None
    ours = logits.clone().requires_grad_()
    loss = colorization_loss(ours, targets, weights, mask)
    loss.backward()
    ref_logits = logits.double().requires_grad_()
    expected = _loss_reference(ref_logits, targets, weights, mask)
    expected.backward()
    assert loss.dtype == torch.float32
    assert_close(loss.double(), expected.detach(), atol=1e-6, rtol=1e-6)
    assert_close(ours.grad.double(), ref_logits.grad, atol=1e-8, rtol=1e-5)


def test_colorization_loss_runs_in_float32_under_bf16_autocast():
    bins = AB.ab_bins(GRID)
    targets = AB.soft_encode(_random_ab(16), bins)
    logits = torch.randn(2, len(bins), 3, 4, generator=_gen(17)).bfloat16()
    weights = torch.rand(len(bins), generator=_gen(18))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = colorization_loss(logits, targets, weights)
    assert loss.dtype == torch.float32
    assert_close(loss, colorization_loss(logits.float(), targets, weights), atol=0, rtol=0)
