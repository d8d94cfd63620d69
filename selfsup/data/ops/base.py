"""Shared pieces of the batched image ops: per-sample broadcasting, seeded draws, device moves, masked updates.

Every op in :mod:`selfsup.data.ops` comes in two parts: a deterministic ``op(images, params...)`` on a float
``(B, C, H, W)`` batch in [0, 1] whose per-sample parameters are tensors of length ``B``, and a sampler that
draws those parameters from a :class:`torch.Generator` (on the generator's device, then moved), so that a seed
fixes the output. The ops follow ``torchvision.transforms.v2.functional`` image by image, but treat the whole
batch in a few tensor ops with no Python loop over samples.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Device = torch.device | str | None

def per_sample(values: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1), to broadcast a per-sample value over a (B, C, H, W) batch."""
    return values.view(-1, 1, 1, 1)


def move(t: Tensor, device: Device) -> Tensor:
    """``t`` on ``device`` (None: where it is); asynchronous only from the host, where that is safe."""
    return t if device is None else t.to(device, non_blocking=t.device.type == "cpu")


def uniform(shape: Sequence[int], low: float, high: float, generator: torch.Generator | None,
             dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform draws on [low, high) on the generator's device (CPU for the default generator)."""
    device = generator.device if generator is not None else None
    return torch.rand(shape, generator=generator, device=device, dtype=dtype) * (high - low) + low


@functools.lru_cache(maxsize=64)
def constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small constant tensor, made once per device (a fresh host-to-GPU copy every step would sync)."""
    return torch.tensor(values, dtype=dtype, device=device)


def accelerated(t: Tensor) -> bool:
    """Whether ``t`` lives on an accelerator, where the ops are arranged for few kernel launches: masked ops
    run on the whole batch and keep the masked samples (finding the masked indices would synchronise with the
    host), and all views go through the ops together. On the CPU, masked ops run on the selected sub-batch
    (less work) and views go one at a time (batches that stay in the cache run faster)."""
    return t.device.type != "cpu"


def update_subset(out: Tensor, mask: Tensor, fn: Callable[..., Tensor], *per_sample: Tensor) -> None:
    """In place, ``out[i] = fn(out[i], *(a[i] for a in per_sample))`` for the samples ``i`` where ``mask``.

    On the CPU ``fn`` runs once on the selected sub-batch; the mask and the per-sample values may live on
    another device than ``out``. With a mask on the GPU (:func:`accelerated`), ``fn`` runs on the whole batch
    and the masked samples are kept: the same result with no host synchronisation.
    """
    if accelerated(mask):
        out.copy_(select(mask, fn(out, *(move(a, out.device) for a in per_sample)), out))
        return
    idx = mask.nonzero().squeeze(1)
    if idx.numel() == 0:
        return
    args = [move(a[idx], out.device) for a in per_sample]
    idx = move(idx, out.device)
    out.index_copy_(0, idx, fn(out.index_select(0, idx), *args))


def gray(images: Tensor) -> Tensor:
    """ITU-R 601-2 luma with torchvision's ``rgb_to_grayscale`` weights, (B, 3, H, W) -> (B, 1, H, W)."""
    r, g, b = images.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def blend(images: Tensor, other: Tensor, factors: Tensor) -> Tensor:
    """torchvision's ``blend``: ``clamp(f * images + (1 - f) * other, 0, 1)`` with a per-sample ``f``."""
    f = per_sample(factors.to(images.dtype))
    return images.mul(f).add_(other * (1.0 - f)).clamp_(0.0, 1.0)


def select(flags: Tensor, chosen: Tensor, other: Tensor) -> Tensor:
    """Per sample, ``chosen`` where the flag is set, else ``other``.

    An exact ``torch.lerp`` with weights 0 and 1: several times faster than ``torch.where`` on CPU.
    """
    return torch.lerp(other, chosen, per_sample(move(flags, other.device).to(other.dtype)))


def to_float(images: Tensor) -> Tensor:
    """uint8 images -> float32 in [0, 1] (torchvision ``to_dtype(..., scale=True)``); float passes through."""
    if images.is_floating_point():
        return images
    return images.to(torch.float32).mul_(1.0 / 255.0)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel ``(x - mean) / std`` of a float batch, as torchvision ``normalize``."""
    mean_t = constant(tuple(mean), images.dtype, images.device).view(-1, 1, 1)
    std_t = constant(tuple(std), images.dtype, images.device).view(-1, 1, 1)
    return (images - mean_t) / std_t


def resize(images: Tensor, size: int) -> Tensor:
    """Evaluation transform: uint8 or float batch -> float [0, 1] at ``size`` x ``size``.

    As torchvision ``resize(img, [size, size])``: bilinear with antialiasing (which only acts when
    downscaling); identity when the batch is already ``size`` x ``size``.
    """
    x = to_float(images)
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
