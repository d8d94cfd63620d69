"""The ResNet generator of SNGAN (Miyato et al., ICLR 2018, table 4), the CIFAR-10 generator that SSGAN used
(Chen et al., CVPR 2019), and the helpers that put its tanh output into the library's image conventions.

Images elsewhere in the library are uint8 ``(B, 3, H, W)`` or float in [0, 1]; networks see them ImageNet-normalised
(:func:`selfsup.data.views.prepare`). The generator works in [-1, 1]: :func:`to_unit` maps its output to [0, 1]
(then ``prepare(to_unit(fake))`` is what a discriminator backbone sees), :func:`to_uint8` to stored images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.backbones.base import scaled
from selfsup.errors import UserError


def _glorot(layer: nn.Conv2d | nn.Linear, gain: float = 1.0) -> None:
    """Glorot-uniform weights and zero bias, the initialisation of the SNGAN reference code."""
    nn.init.xavier_uniform_(layer.weight, gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class UpBlock(nn.Module):
    """Residual block that doubles the resolution: BN-ReLU-upsample-conv3x3-BN-ReLU-conv3x3, plus a shortcut
    upsample + conv1x1.

    The shortcut runs its 1x1 convolution before the nearest-neighbour upsampling: the two commute exactly and the
    convolution then costs a quarter. Residual convolutions start Glorot-uniform with gain sqrt(2), the shortcut
    with gain 1 (SNGAN reference code). The convolutions have no bias, unlike the reference code's: every one of
    them feeds a batch norm (the block's own, or the next one's), which removes any per-channel constant, so a
    bias would only wander (under Adam, a gradient of rounding noise moves it by the full step).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        for conv in (self.conv1, self.conv2):
            _glorot(conv, math.sqrt(2.0))
        _glorot(self.shortcut)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_upsample(F.relu(self.bn1(x))))
        h = self.conv2(F.relu(self.bn2(h)))
        return h + _upsample(self.shortcut(x))


class ResNetGenerator(nn.Module):
    """SNGAN's ResNet generator: z -> linear -> 4x4 x C -> log2(image_size / 4) up-blocks of width C -> BN-ReLU-
    conv3x3-tanh, images ``(B, out_channels, image_size, image_size)`` in [-1, 1]; C = 256 times ``width``.

    ``image_size`` 32 at ``width`` 1 is the CIFAR-10 generator of SNGAN and SSGAN (4.28 M parameters);
    16 and 64 add or drop up-blocks at the same width (SNGAN's 48 px and 128 px models change the widths too; not
    reproduced here). SSGAN's compare_gan code ends in a sigmoid to [0, 1] and upsamples by zero insertion; this
    follows the SNGAN paper and reference code (tanh, nearest neighbour).
    """

    def __init__(self, z_dim: int = 128, width: float = 1.0, image_size: int = 32, out_channels: int = 3):
        super().__init__()
        blocks = math.log2(image_size / 4) if image_size >= 8 else 0.0
        if not blocks.is_integer() or blocks < 1:
            raise UserError(f"generator image_size must be 4 times a power of two, at least 8 (got {image_size})")
        if z_dim < 1 or width <= 0:
            raise UserError(f"generator z_dim and width must be positive (got {z_dim}, {width})")
        channels = scaled(256, width)
        self.z_dim, self.channels, self.image_size = z_dim, channels, image_size
        self.linear = nn.Linear(z_dim, 4 * 4 * channels)
        self.blocks = nn.Sequential(*(UpBlock(channels, channels) for _ in range(int(blocks))))
        self.bn = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        _glorot(self.linear)
        _glorot(self.conv)

    def forward(self, z: Tensor) -> Tensor:
        h = self.linear(z).view(-1, self.channels, 4, 4)
        h = self.blocks(h)
        return torch.tanh(self.conv(F.relu(self.bn(h))))


def sample_latent(n: int, z_dim: int, generator: torch.Generator) -> Tensor:
    """``n`` latent codes z ~ N(0, I) of size ``z_dim``, float32, drawn with the random-number ``generator`` on its
    device (so a seed fixes them; move them where the network is)."""
    return torch.randn(n, z_dim, generator=generator, device=generator.device)


@torch.no_grad()
def generate(generator: ResNetGenerator, n: int, seed: int = 0, chunk: int = 256) -> Tensor:
    """``n`` images of ``generator`` as uint8 ``(n, 3, H, W)`` on the CPU: in eval mode (its running batch-norm
    statistics; its mode is restored), from latents drawn on the CPU with ``seed`` (so a seed fixes them on any
    device), ``chunk`` at a time. What a GAN's ``sample`` (samples.png, ``selfsup eval fid``) returns."""
    was_training, device = generator.training, next(generator.parameters()).device
    generator.eval()
    try:
        g = torch.Generator().manual_seed(seed)
        return torch.cat([to_uint8(generator(sample_latent(min(chunk, n - s), generator.z_dim, g).to(device))).cpu()
                          for s in range(0, n, chunk)])
    finally:
        generator.train(was_training)


def to_unit(x: Tensor) -> Tensor:
    """Generator output in [-1, 1] -> float images in [0, 1], the input of :func:`selfsup.data.views.prepare`."""
    return x.add(1.0).mul_(0.5).clamp_(0.0, 1.0)


def to_uint8(x: Tensor) -> Tensor:
    """Generator output in [-1, 1] -> uint8 images, rounded to the nearest level, as stored images are."""
    return to_unit(x).mul_(255.0).round_().to(torch.uint8)
