"""Gaussian blur with a per-sample sigma (torchvision ``gaussian_blur``), as two depthwise convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.data.ops.base import Device, move, uniform, update_subset


def sample_gaussian_blur(batch: int, sigma: tuple[float, float] = (0.1, 2.0),
                         generator: torch.Generator | None = None, device: Device = None) -> Tensor:
    """Per-sample blur sigmas (B,), uniform on ``sigma`` as torchvision ``GaussianBlur`` draws them."""
    return move(uniform((batch,), sigma[0], sigma[1], generator), device)


def gaussian_blur(images: Tensor, sigmas: Tensor, kernel_size: int, flags: Tensor) -> Tensor:
    """Gaussian-blur the flagged samples, each with its own sigma (torchvision ``gaussian_blur``).

    Same kernel as ``gaussian_blur(img, [k, k], [s, s])``, applied separably after reflect padding, as
    two depthwise convolutions over the flagged sub-batch (one group per sample and channel).
    """
    out = images.clone()
    update_subset(out, flags, lambda x, s: _blur(x, s, kernel_size), sigmas.to(images.dtype))
    return out


def _blur(images: Tensor, sigmas: Tensor, k: int) -> Tensor:
    batch, channels, height, width = images.shape
    taps = torch.arange(k, dtype=images.dtype, device=images.device) - (k - 1) / 2
    kernel = torch.softmax(-(taps**2) / (2 * sigmas[:, None] ** 2), dim=1)  # (n, k), normalised
    kernel = kernel.repeat_interleave(channels, 0)
    x = F.pad(images.reshape(1, batch * channels, height, width), [k // 2] * 4, mode="reflect")
    x = F.conv2d(x, kernel.view(-1, 1, k, 1), groups=batch * channels)
    x = F.conv2d(x, kernel.view(-1, 1, 1, k), groups=batch * channels)
    return x.view(batch, channels, height, width)
