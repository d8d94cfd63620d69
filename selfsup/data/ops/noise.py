"""The corruptions of the denoising autoencoder (Vincent, Larochelle, Lajoie, Bengio, Manzagol, "Stacked Denoising
Autoencoders: Learning Useful Representations in a Deep Network with a Local Denoising Criterion", JMLR 2010,
section 4.2): additive isotropic Gaussian noise, and masking noise that sets pixels to 0. Each is a deterministic op
of the images and a noise tensor, and a sampler that draws that tensor from a generator."""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.data.ops.base import Device, move

#: the corruptions :func:`sample_noise` draws and :func:`corrupt` applies
NOISES = ("gaussian", "masking")


def add_noise(images: Tensor, noise: Tensor) -> Tensor:
    """Additive Gaussian noise: ``clamp(images + noise, 0, 1)`` for images ``(B, C, H, W)`` in [0, 1] and a
    noise field of the same shape (e.g. from :func:`sample_gaussian_noise`)."""
    return (images + noise.to(images.device, images.dtype)).clamp_(0.0, 1.0)


def mask_pixels(images: Tensor, mask: Tensor) -> Tensor:
    """Masking noise: every pixel where ``mask`` ``(B, 1, H, W)`` (bool) is set becomes 0 in all its channels."""
    return images * (~mask.to(images.device)).to(images.dtype)


def sample_gaussian_noise(batch: int, shape: tuple[int, int, int], sigma: float,
                          generator: torch.Generator | None = None, device: Device = None) -> Tensor:
    """A field ``(B, *shape)`` of independent N(0, sigma^2) draws, one per element (Vincent et al.'s isotropic
    Gaussian noise), drawn on the generator's device."""
    on = generator.device if generator is not None else None
    return move(torch.randn((batch, *shape), generator=generator, device=on).mul_(sigma), device)


def sample_pixel_mask(batch: int, height: int, width: int, ratio: float, generator: torch.Generator | None = None,
                      device: Device = None) -> Tensor:
    """A mask ``(B, 1, H, W)`` (bool) where every pixel is masked independently with probability ``ratio``, all
    its channels together (the paper masks a fraction of the input's elements; the pixel is the element here)."""
    on = generator.device if generator is not None else None
    return move(torch.rand((batch, 1, height, width), generator=generator, device=on) < ratio, device)


def sample_noise(kind: str, batch: int, shape: tuple[int, int, int], level: float,
                 generator: torch.Generator | None = None, device: Device = None) -> Tensor:
    """The noise tensor of ``kind`` for :func:`corrupt`: a Gaussian field of std ``level``, or a pixel mask of
    rate ``level``."""
    if kind == "gaussian":
        return sample_gaussian_noise(batch, shape, level, generator, device)
    return sample_pixel_mask(batch, shape[1], shape[2], level, generator, device)


def corrupt(kind: str, images: Tensor, noise: Tensor) -> Tensor:
    """``images`` corrupted by the noise tensor of ``kind`` (:func:`add_noise` or :func:`mask_pixels`)."""
    return add_noise(images, noise) if kind == "gaussian" else mask_pixels(images, noise)
