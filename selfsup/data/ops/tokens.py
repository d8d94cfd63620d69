"""Batched patch-token ops of masked image modelling (He, Chen, Xie, Li, Dollár, Girshick, "Masked Autoencoders
Are Scalable Vision Learners", CVPR 2022): images cut into non-overlapping patches and back, a random subset of
the patches kept per sample (the argsort of uniform noise, so every sample keeps exactly as many), and the kept
tokens gathered, all without a loop over samples."""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.data.ops.base import Device, move


def patchify(images: Tensor, patch: int) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, N, patch * patch * C)``: the ``patch`` x ``patch`` patches in row-major order,
    each flattened row by row, the channels of a pixel together (MAE's ``nchpwq -> nhwpqc``). ``H`` and ``W``
    must be multiples of ``patch``."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: Tensor, patch: int, height: int, width: int) -> Tensor:
    """The inverse of :func:`patchify`: ``(B, N, patch * patch * C)`` -> ``(B, C, height, width)``."""
    b, _, k = patches.shape
    c, gh, gw = k // (patch * patch), height // patch, width // patch
    x = patches.reshape(b, gh, gw, patch, patch, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, height, width)


def visible_count(tokens: int, mask_ratio: float) -> int:
    """How many of ``tokens`` patches stay visible: ``int(tokens * (1 - mask_ratio))``, as MAE."""
    return int(tokens * (1.0 - mask_ratio))


def sample_token_noise(batch: int, tokens: int, generator: torch.Generator | None = None,
                       device: Device = None) -> Tensor:
    """Per-sample noise ``(B, N)``, uniform on [0, 1), drawn on the generator's device: its order masks."""
    on = generator.device if generator is not None else None
    return move(torch.rand((batch, tokens), generator=generator, device=on), device)


def mask_from_noise(noise: Tensor, keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``keep`` patches of lowest noise stay visible (MAE's ``random_masking``), a uniformly random subset
    when the noise is i.i.d.: returns ``ids_keep`` ``(B, keep)`` (the visible patches, by rising noise),
    ``ids_restore`` ``(B, N)`` (where each patch sits in the noise order: ``gather_tokens(shuffled,
    ids_restore)`` puts the tokens ``[visible, masked]`` back in image order) and ``mask`` ``(B, N)`` float, 1
    on masked patches."""
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    return ids_shuffle[:, :keep], ids_restore, (ids_restore >= keep).to(noise.dtype)


def gather_tokens(tokens: Tensor, ids: Tensor) -> Tensor:
    """``out[b, i] = tokens[b, ids[b, i]]``: tokens ``(B, N, D)``, ids ``(B, K)`` int64 -> ``(B, K, D)``."""
    return tokens.gather(1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def paste_patches(images: Tensor, fill: Tensor | float, mask: Tensor, patch: int) -> Tensor:
    """``images`` ``(B, C, H, W)`` with the patches where ``mask`` ``(B, N)`` is set taken from ``fill`` (images
    of the same shape, or a constant)."""
    b, c, h, w = images.shape
    source = fill if isinstance(fill, Tensor) else torch.full_like(images, fill)
    chosen = torch.where(mask.bool().unsqueeze(-1), patchify(source, patch), patchify(images, patch))
    return unpatchify(chosen, patch, h, w)
