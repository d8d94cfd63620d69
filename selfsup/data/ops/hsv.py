"""Exemplar-CNN's colour transformations, batched with per-sample parameters (Dosovitskiy, Springenberg, Riedmiller,
Brox, "Discriminative Unsupervised Feature Learning with Convolutional Neural Networks", NIPS 2014, section 2):
"contrast 1", a scaling of each pixel's projections onto the principal components of all pixels, and "contrast 2"
and "color", powers, factors and offsets of saturation and value and a shift of hue in HSV space."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from selfsup.data.ops.base import Device, constant, move, uniform


def rgb_to_hsv(images: Tensor) -> Tensor:
    """RGB -> HSV, all channels in [0, 1] (hue in turns), as Python's ``colorsys.rgb_to_hsv`` pixel by pixel:
    value = max, saturation = chroma / max (0 for black), hue 0 where chroma is 0."""
    r, g, b = images.unbind(1)
    maxc, minc = images.amax(1), images.amin(1)
    chroma = maxc - minc
    # chroma * hue in sixths of a turn, by the channel holding the max with colorsys's priority red, green, blue
    sixths = torch.where(r == maxc, g - b, torch.where(g == maxc, 2.0 * chroma + b - r, 4.0 * chroma + r - g))
    hue = (sixths / (6.0 * torch.where(chroma > 0, chroma, 1.0))).remainder_(1.0)
    sat = chroma / torch.where(maxc > 0, maxc, 1.0)  # 0 for black: its chroma is 0 too
    return torch.stack([hue, sat, maxc], 1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """HSV -> RGB, the inverse of :func:`rgb_to_hsv` (``colorsys.hsv_to_rgb``) in closed form: channel ``c`` is
    ``v - v s clamp(min(k, 4 - k), 0, 1)`` with ``k = (n_c + 6 h) mod 6`` and ``n`` = 5, 3, 1 for R, G, B, the
    piecewise-linear curves of the six hue sectors."""
    h, s, v = hsv.unbind(1)
    offsets = constant((5.0, 3.0, 1.0), hsv.dtype, hsv.device).view(1, 3, 1, 1)
    k = (h.unsqueeze(1) * 6.0 + offsets).remainder_(6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * ramp


@dataclass
class ExemplarColorParams:
    """Per-sample parameters of :func:`exemplar_color`: ``pca`` (B, 3) factors of the principal components;
    ``power``, ``factor``, ``offset`` (B, 2) for saturation and value; ``hue`` (B,) shift in turns."""

    pca: Tensor
    power: Tensor
    factor: Tensor
    offset: Tensor
    hue: Tensor

    def __getitem__(self, rows: slice | Tensor) -> ExemplarColorParams:
        """The parameters of some rows of the batch (a slice or an index tensor)."""
        return ExemplarColorParams(self.pca[rows], self.power[rows], self.factor[rows], self.offset[rows],
                                   self.hue[rows])


def _log_uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return uniform(shape, math.log(low), math.log(high), generator).exp()


def sample_exemplar_color(batch: int, pca: tuple[float, float] = (0.5, 2.0), power: tuple[float, float] = (0.25, 4.0),
                          factor: tuple[float, float] = (0.7, 1.4), offset: float = 0.1, hue: float = 0.1,
                          generator: torch.Generator | None = None, device: Device = None) -> ExemplarColorParams:
    """The paper's ranges: principal-component factors in [0.5, 2] (one per component), saturation and value
    raised to a power in [0.25, 4], multiplied by [0.7, 1.4] and shifted by [-0.1, 0.1] (each drawn for the two
    separately), hue shifted by [-0.1, 0.1]. Ranges of multiplicative quantities are drawn log-uniformly
    (symmetric about 1: a power of 0.25 as likely as one of 4), offsets uniformly."""
    draws = (_log_uniform((batch, 3), *pca, generator), _log_uniform((batch, 2), *power, generator),
             _log_uniform((batch, 2), *factor, generator), uniform((batch, 2), -offset, offset, generator),
             uniform((batch,), -hue, hue, generator))
    return ExemplarColorParams(*(move(t, device) for t in draws))


def pca_contrast(images: Tensor, mean: Tensor, components: Tensor, factors: Tensor) -> Tensor:
    """"Contrast 1": every pixel's projection onto each principal component (rows of ``components`` (3, 3),
    orthonormal, about the pixel ``mean`` (3,)) multiplied by the sample's factor for that component (B, 3),
    clamped to [0, 1]: ``x' = mean + sum_k f_k <x - mean, c_k> c_k``."""
    mean = mean.to(images.device, images.dtype).view(1, 3, 1, 1)
    c = components.to(images.device, images.dtype)
    coords = torch.einsum("kc,bchw->bkhw", c, images - mean) * factors.to(images.device, images.dtype)[:, :, None,
                                                                                                      None]
    return (torch.einsum("kc,bkhw->bchw", c, coords) + mean).clamp_(0.0, 1.0)


def adjust_hsv(images: Tensor, power: Tensor, factor: Tensor, offset: Tensor, hue: Tensor) -> Tensor:
    """"Contrast 2" and "color": per sample, saturation and value (channel pairs of ``power``, ``factor``,
    ``offset``, (B, 2)) become ``clamp(x ** power * factor + offset, 0, 1)`` and the hue moves by ``hue`` turns
    (B,), modulo 1."""
    h, sv = rgb_to_hsv(images).split([1, 2], 1)
    dev, dt = images.device, images.dtype
    sv = sv.pow(power.to(dev, dt)[:, :, None, None]).mul_(factor.to(dev, dt)[:, :, None, None])
    sv = sv.add_(offset.to(dev, dt)[:, :, None, None]).clamp_(0.0, 1.0)
    h = (h + hue.to(dev, dt).view(-1, 1, 1, 1)).remainder(1.0)
    return hsv_to_rgb(torch.cat([h, sv], 1))


def exemplar_color(images: Tensor, mean: Tensor, components: Tensor, params: ExemplarColorParams) -> Tensor:
    """Contrast 1, then contrast 2 and color (:func:`pca_contrast`, :func:`adjust_hsv`)."""
    x = pca_contrast(images, mean, components, params.pca)
    return adjust_hsv(x, params.power, params.factor, params.offset, params.hue)


def pixel_moments(images: Tensor) -> Tensor:
    """Per image, the mean pixel (3) and the mean outer product of pixels (9), ``(B, 12)`` float64: summed over a
    data set they give its pixels' mean and covariance (:func:`principal_components`)."""
    x = images.double().flatten(2) / (255.0 if not images.is_floating_point() else 1.0)
    outer = torch.einsum("bcn,bdn->bcd", x, x) / x.shape[2]
    return torch.cat([x.mean(2), outer.flatten(1)], 1)


def principal_components(moments: Tensor) -> tuple[Tensor, Tensor]:
    """The mean pixel (3,) and the principal components (3, 3), one per row, largest variance first, of a data
    set's pixels from its images' :func:`pixel_moments` (every image weighted alike: they have the same size)."""
    m = moments.double().mean(0)
    mean = m[:3]
    cov = m[3:].view(3, 3) - torch.outer(mean, mean)
    _, vectors = torch.linalg.eigh(cov)
    return mean.float(), vectors.flip(1).t().contiguous().float()
