"""The region masks of context encoders (Pathak, Krähenbühl, Donahue, Darrell, Efros, "Context Encoders: Feature
Learning by Inpainting", CVPR 2016, section 3.3): the central square, random blocks (several possibly overlapping
squares) and random regions of arbitrary shape, each as a deterministic op of per-sample parameters and a sampler
that draws them from a generator; and the band where the prediction overlaps the context (:func:`grow`).

Every mask is ``(B, 1, H, W)`` bool, True where the pixel is removed. The paper's random regions are PASCAL VOC
segmentation masks, deformed and pasted at random places; here they are the lowest quantile of smooth random
fields (Gaussian-blurred white noise): blobs of arbitrary shape, of an exact area, at uniformly random places.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.data.ops.base import Device, move
from selfsup.data.ops.blur import gaussian_blur

#: the masks a context encoder may use
MASKS = ("center", "blocks", "region")


def box_masks(boxes: Tensor, side: int, size: int) -> Tensor:
    """The union of every sample's squares of ``side`` px with corners ``boxes`` ``(B, K, 2)`` = (top, left), in
    ``size`` x ``size`` images: ``(B, 1, size, size)`` bool, by broadcasting (no loop over samples or boxes)."""
    top, left = boxes.unsqueeze(-1).unbind(-2)  # (B, K, 1) each
    pos = torch.arange(size, device=boxes.device)
    rows, cols = (pos >= top) & (pos < top + side), (pos >= left) & (pos < left + side)  # (B, K, size)
    return (rows.unsqueeze(-1) & cols.unsqueeze(-2)).any(1, keepdim=True)


def center_boxes(batch: int, size: int, overlap: int = 0, device: Device = None) -> tuple[Tensor, int]:
    """The paper's central hole: the central square of half the side (its 64 of 128 px), shrunk by ``overlap`` px on
    every side (the context it keeps there is predicted too, see :func:`grow`): ``(boxes (B, 1, 2), side)``."""
    region = size // 2
    side = region - 2 * overlap
    if side < 1:
        raise ValueError(f"an overlap of {overlap} px leaves no central hole in {size} px images")
    corner = (size - region) // 2 + overlap
    return torch.full((batch, 1, 2), corner, dtype=torch.int64, device=device), side


def block_side(size: int, count: int, fraction: float) -> int:
    """The side of each of ``count`` random blocks that together remove up to ``fraction`` of the image (less
    where they overlap): ``round(size sqrt(fraction / count))``, at least 1 px."""
    return max(1, round(size * math.sqrt(fraction / count)))


def sample_blocks(batch: int, size: int, side: int, count: int, generator: torch.Generator | None = None,
                  device: Device = None) -> Tensor:
    """Corners ``(B, count, 2)`` int64 of ``count`` squares of ``side`` px per sample, every top and left uniform
    on ``{0, ..., size - side}`` (each block wholly inside the image), independently."""
    on = generator.device if generator is not None else None
    return move(torch.randint(size - side + 1, (batch, count, 2), generator=generator, device=on), device)


def region_radius(sigma: float) -> int:
    """The radius of the Gaussian kernel that smooths a region field: ``ceil(3 sigma)``, at least 1 px."""
    return max(1, math.ceil(3.0 * sigma))


def sample_region_noise(batch: int, size: int, sigma: float, generator: torch.Generator | None = None,
                        device: Device = None) -> Tensor:
    """White noise ``(B, 1, size + 2r, size + 2r)``, N(0, 1) per pixel, ``r = region_radius(sigma)``: the margin
    lets every image pixel be smoothed by the whole kernel, so the field and the masks are the same everywhere."""
    on = generator.device if generator is not None else None
    extent = size + 2 * region_radius(sigma)
    return move(torch.randn((batch, 1, extent, extent), generator=generator, device=on), device)


def region_masks(noise: Tensor, sigma: float, fraction: float) -> Tensor:
    """Random regions from :func:`sample_region_noise`'s noise: the noise blurred by a Gaussian of std ``sigma``
    (torchvision's kernel of ``2r + 1`` taps), cropped by ``r`` on every side to ``(B, 1, H, W)``, and every
    sample's ``round(fraction H W)`` lowest pixels removed (its own quantile, so every mask has that exact area up
    to ties). In float32 even inside an autocast region (bf16 values would tie)."""
    r = region_radius(sigma)
    with torch.autocast(noise.device.type, enabled=False):
        x = noise.float()
        flags = torch.ones(len(x), dtype=torch.bool, device=x.device)
        field = gaussian_blur(x, torch.full_like(flags, sigma, dtype=x.dtype), 2 * r + 1, flags)[..., r:-r, r:-r]
        kth = max(1, round(fraction * field[0].numel()))
        threshold = field.flatten(1).kthvalue(kth, dim=1).values
    return field <= threshold.view(-1, 1, 1, 1)


def grow(masks: Tensor, pixels: int) -> Tensor:
    """``masks`` ``(B, 1, H, W)`` dilated by ``pixels`` px in the chessboard metric (a square grows into the square
    ``pixels`` larger on every side): the hole and the band of context around it."""
    if pixels <= 0:
        return masks
    return F.max_pool2d(masks.float(), 2 * pixels + 1, stride=1, padding=pixels) > 0
