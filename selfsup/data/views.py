"""View recipes shared by methods: turn a uint8 batch into the network inputs a method needs."""

from __future__ import annotations

import torch
from torch.profiler import record_function

from selfsup.data.augment import AugmentConfig, augment
from selfsup.data.ops.base import IMAGENET_MEAN, IMAGENET_STD, normalize, resize
from selfsup.distributed import rank, world_size


def prepare(x: torch.Tensor) -> torch.Tensor:
    """Normalise a float [0, 1] batch; channels_last on GPU, where convolutions are faster in it."""
    x = normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def augmented(images: torch.Tensor, cfg: AugmentConfig, size: int, generator: torch.Generator,
              n: int = 1) -> torch.Tensor:
    """``n`` independently augmented views of every image, float [0, 1], stacked as ``(n * B, 3, size, size)``;
    under torch.distributed each rank draws its rows of the global batch's parameters, so the run augments
    as a single process would."""
    return augment(images, cfg, size, generator, shard=(rank(), world_size()), views=n)


def augmented_views(images: torch.Tensor, cfg: AugmentConfig, size: int, generator: torch.Generator,
                    n: int = 2) -> torch.Tensor:
    """``n`` independently augmented views of every image, normalised, stacked as ``(n * B, 3, size, size)``."""
    with record_function("augment"):
        return prepare(augmented(images, cfg, size, generator, n))


def eval_view(images: torch.Tensor, size: int) -> torch.Tensor:
    """The evaluation transform: resize only, then normalise."""
    return prepare(resize(images, size))
