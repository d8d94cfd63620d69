"""The quantised ab space of colourisation as classification (Zhang, Isola, Efros, "Colorful Image
Colorization", ECCV 2016, section 2): bin centres, soft-encoded targets, the smoothed empirical prior, the
class-rebalancing weights (eq. 4), the annealed-mean decoding (eq. 5) and the grayscale-image test.

Shapes: ab maps are ``(B, 2, H, W)`` (channels a, b of :func:`selfsup.data.ops.lab.rgb_to_lab`), bins are
``(Q, 2)`` centres, encodings and logits are ``(B, Q, H, W)``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.data.ops.base import Device, move
from selfsup.data.ops.lab import rgb_to_lab
from selfsup.errors import UserError

AB_RANGE = 110.0  # the full grid covers [-110, 110]^2, as the reference code's ab grid
_AB_LIMIT = 128.0  # |a|, |b| of every sRGB colour stay below this (they reach ~108)
_FACE_STEPS = 512  # samples per side of each face of the RGB cube when finding the in-gamut cells
_CHUNK = 1 << 14  # pixels per block of the pixel-by-bin distance matrix (Q floats each)


def _cube_faces(steps: int) -> list[Tensor]:
    """The six faces of the RGB cube as (3, steps, steps) images, one channel held at 0 or 1."""
    u = torch.linspace(0.0, 1.0, steps)
    free = torch.stack(torch.meshgrid(u, u, indexing="ij"))
    faces = []
    for axis in range(3):
        for level in (0.0, 1.0):
            channels = list(free.unbind(0))
            channels.insert(axis, torch.full((steps, steps), level))
            faces.append(torch.stack(channels))
    return faces


@functools.lru_cache(maxsize=8)
def _bins(grid: float, gamut: bool) -> Tensor:
    if not gamut:
        steps = torch.arange(-int(AB_RANGE // grid), int(AB_RANGE // grid) + 1, dtype=torch.float64) * grid
        return torch.cartesian_prod(steps, steps).float()
    half = int(_AB_LIMIT // grid) + 1
    side = 2 * half + 1
    hit = torch.zeros(side * side, dtype=torch.bool)
    for face in _cube_faces(_FACE_STEPS):
        cell = torch.round(rgb_to_lab(face)[1:].flatten(1) / grid).long() + half
        hit[cell[0] * side + cell[1]] = True
    index = hit.nonzero().squeeze(1)
    return (torch.stack([index // side, index % side], 1) - half).float() * grid


def ab_bins(grid: float = 10.0, gamut: bool = True, device: Device = None) -> Tensor:
    """Bin centres ``(Q, 2)`` (a, b) of the ab plane quantised with spacing ``grid``, sorted by a then b.

    ``gamut=True``: the centres ``grid * (i, j)`` whose cell (the square of side ``grid`` around the centre,
    i.e. the ab values that round to it) holds the ab of some sRGB colour. Every ab value of the sRGB gamut
    is reached on the surface of the RGB cube (along a line of fixed (a, b), the extreme L of the Lab gamut
    lies on its boundary, the image of the cube's faces), so the faces are sampled at 512 x 512 colours
    each (~0.3 s, once per process). At ``grid=10`` this gives Q = 262 bins (a in [-90, 100], b in [-110,
    90]), the same set as a 2048 x 2048 sampling; 261 of them are reached by 8-bit colours, while the
    cell of (20, -80) is entered only in its corner a > 24.7, b > -75.2, near RGB (0, 0.46, 1).

    Zhang et al. keep 313 bins at grid 10 in the same bounding box and do not publish the criterion. Ours
    are a strict subset of theirs: their extra 51 form a rim of cells whose centres lie 8 to 15 ab units
    from the nearest sRGB colour and which no sRGB colour rounds to (they only ever get soft targets' tails).

    ``gamut=False``: the full regular grid of centres within [-110, 110]^2 (529 bins at grid 10).
    Cached per (grid, gamut); returns float32 on ``device`` (default CPU).
    """
    if grid <= 0:
        raise UserError(f"ab grid spacing must be positive, got {grid}")
    return move(_bins(float(grid), gamut).clone(), device)


def nearest_bins(ab: Tensor, bins: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
    """The ``k`` bins nearest to every pixel of ab maps: squared distances and indices, (B, k, H, W) each,
    in no particular order among the ``k``.

    The bins are chosen from one matmul per block of 16384 pixels (``|c|^2 - 2 p.c``, ~17 MB at Q = 262
    however large the batch); float32 cancellation there (~1e-3 on d^2 ~ 1e4) can only swap bins tied to
    that precision. The distances returned are recomputed exactly from the chosen centres.
    """
    q = bins.shape[0]
    if not 1 <= k <= q:
        raise UserError(f"k must be between 1 and the number of bins ({q}), got {k}")
    batch, _, height, width = ab.shape
    points = ab.detach().float().movedim(1, -1).reshape(-1, 2)
    centres = bins.to(points)
    centre_sq = centres.square().sum(1)
    index = torch.empty(points.shape[0], k, device=points.device, dtype=torch.long)
    for start in range(0, points.shape[0], _CHUNK):
        rows = slice(start, start + _CHUNK)
        block = torch.addmm(centre_sq, points[rows], centres.T, alpha=-2.0)  # d^2 - |p|^2
        index[rows] = block.argmin(1, keepdim=True) if k == 1 else block.topk(k, 1, largest=False, sorted=False)[1]
    dist = (points[:, None, :] - centres[index]).square_().sum(-1)
    shape = (batch, height, width, k)
    return dist.view(shape).permute(0, 3, 1, 2), index.view(shape).permute(0, 3, 1, 2)


def soft_encode(ab: Tensor, bins: Tensor, k: int = 5, sigma: float = 5.0) -> Tensor:
    """Soft-encoded targets ``Z`` (B, Q, H, W) of ab maps (Zhang et al., section 2.1).

    Each pixel's ``k`` nearest bins get weights proportional to a Gaussian of their distance, ``exp(-d^2 /
    (2 sigma^2))``, normalised to sum 1 (a softmax over the ``k``, so a pixel far from every bin stays
    finite); all other bins get 0. The paper uses k = 5, sigma = 5 (its released Caffe layer k = 10).
    The output is dense, B * Q * H * W floats: 275 MB for 256 maps of 32 x 32 at Q = 262.
    """
    if sigma <= 0:
        raise UserError(f"soft-encoding sigma must be positive, got {sigma}")
    dist, index = nearest_bins(ab, bins, k)
    weights = torch.softmax(dist * (-0.5 / sigma**2), dim=1)
    out = torch.zeros(ab.shape[0], bins.shape[0], *ab.shape[2:], device=ab.device)
    return out.scatter_(1, index, weights)


def ab_histogram(ab: Tensor, bins: Tensor) -> Tensor:
    """Nearest-bin counts (Q,) int64 of ab values: maps ``(B, 2, H, W)`` or samples ``(N, 2)``.

    Counts add up over batches (and over ranks with an all-reduce) before :func:`smooth_prior`.
    """
    maps = ab.T[None, :, :, None] if ab.dim() == 2 else ab
    return torch.bincount(nearest_bins(maps, bins)[1].flatten(), minlength=bins.shape[0])


def smooth_prior(counts: Tensor, bins: Tensor, sigma: float = 5.0) -> Tensor:
    """The empirical ab distribution ``p~`` (Q,) float32 of Zhang et al., eq. 4: counts smoothed over the bins.

    The paper smooths the empirical distribution with a Gaussian kernel; its author states the released
    prior used the same Gaussian as the soft targets (sigma = 5; richzhang/colorization issue #47), and the
    code computing it is not released. Here the counts are normalised, then every bin's mass is spread over
    all bins with weights ``exp(-|c_q - c_r|^2 / (2 sigma^2))`` normalised per source bin, so no mass leaks
    outside the gamut and the result sums to 1. Computed in float64.
    """
    if sigma <= 0:
        raise UserError(f"prior smoothing sigma must be positive, got {sigma}")
    total = counts.sum()
    if total <= 0:
        raise UserError("the ab prior needs at least one counted pixel")
    p = counts.double() / total
    centres = bins.to(p)
    kernel = torch.softmax((centres[:, None] - centres[None]).square().sum(-1) * (-0.5 / sigma**2), dim=1)
    prior = p @ kernel
    return (prior / prior.sum()).float()


def ab_prior(ab: Tensor, bins: Tensor, sigma: float = 5.0) -> Tensor:
    """The smoothed empirical prior (Q,) of some ab values: :func:`smooth_prior` of :func:`ab_histogram`."""
    return smooth_prior(ab_histogram(ab, bins), bins, sigma)


def rebalance_weights(prior: Tensor, lam: float = 0.5) -> Tensor:
    """Class-rebalancing weights (Q,) of Zhang et al., eq. 4: ``w ~ ((1 - lam) p~ + lam / Q)^-1``.

    Normalised so that the prior-weighted mean ``sum_q p~_q w_q`` is 1. ``lam = 1`` gives uniform weights
    (no rebalancing), ``lam = 0`` the inverse prior; the paper uses 1/2. (The reference code spreads the
    uniform part over the bins of non-zero prior only; with a smoothed prior every bin is non-zero, though
    far bins can underflow to tiny values in float32, which ``lam = 0`` turns into huge weights.)
    """
    if not 0.0 <= lam <= 1.0:
        raise UserError(f"rebalancing lam must lie in [0, 1], got {lam}")
    p = prior.double() / prior.sum()
    mix = (1.0 - lam) * p + lam / p.shape[0]
    if (mix <= 0).any():
        raise UserError("rebalancing with lam = 0 needs a prior with no empty bin")
    w = mix.reciprocal()
    return (w / (p * w).sum()).float()


def annealed_mean(logits: Tensor, bins: Tensor, temperature: float = 0.38) -> Tensor:
    """ab maps (B, 2, H, W) decoded from bin logits (B, Q, H, W) by the annealed mean (Zhang et al., eq. 5).

    ``H(Z) = E[f_T(Z)]`` with ``f_T(z) = exp(log z / T) / sum exp(log z / T)`` and ``z = softmax(logits)``,
    which is exactly ``softmax(logits / T)``; T = 1 is the mean, T -> 0 the mode, the paper uses 0.38.
    """
    if temperature <= 0:
        raise UserError(f"annealed-mean temperature must be positive, got {temperature}")
    with torch.autocast(logits.device.type, enabled=False):
        probs = F.softmax(logits.float() / temperature, dim=1)
        return torch.einsum("bqhw,qc->bchw", probs, bins.to(probs))


def near_grayscale(ab: Tensor, threshold: float = 5.0) -> Tensor:
    """Per image (B,) bool: no pixel has ``|a|`` or ``|b|`` above ``threshold``.

    The reference training code (richzhang/colorization, ``NonGrayMaskLayer``) zeroes the loss of such
    images with the same rule and threshold 5, so a few coloured pixels keep an image in.
    """
    return ~(ab.abs() > threshold).flatten(1).any(1)
