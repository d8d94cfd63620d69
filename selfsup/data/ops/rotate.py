"""All four right-angle rotations of every image in one batch (RotNet, Gidaris et al., ICLR 2018; SSGAN's
rotation loss, Chen et al., CVPR 2019)."""

from __future__ import annotations

import torch


def rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(4B, C, H, W)``: the batch rotated counter-clockwise by 0, 90, 180 and 270 degrees, one block of ``B``
    per angle (as ``torchvision``'s ``rotate(img, 90 * k)`` for square images), and the labels ``k`` (4B,)."""
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels
