"""View recipes shared by methods: turn a uint8 batch into the network inputs a method needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch.profiler import record_function

from selfsup.data.augment import AugmentConfig, augment, augment_tiles
from selfsup.data.ops.base import IMAGENET_MEAN, IMAGENET_STD, normalize, resize
from selfsup.distributed import rank, world_size

T = TypeVar("T")


def device_layout(x: torch.Tensor) -> torch.Tensor:
    """A network input in the layout its device runs fastest: channels_last on GPU."""
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def prepare(x: torch.Tensor) -> torch.Tensor:
    """Normalise a float [0, 1] batch (ImageNet mean and std), in the device's layout."""
    return device_layout(normalize(x, IMAGENET_MEAN, IMAGENET_STD))


def for_this_rank(sample: Callable[[int], T], batch: int) -> T:
    """Per-sample random parameters (or latents) of this rank's ``batch`` rows: ``sample(n)`` draws ``n`` rows,
    here for the global batch of all ranks, and each rank keeps its rows, so that N processes draw exactly
    what one process with the global batch does (the generator is seeded alike on every rank)."""
    return sample(batch * world_size())[rank() * batch : (rank() + 1) * batch]


def augmented(images: torch.Tensor, cfg: AugmentConfig, size: int, generator: torch.Generator,
              n: int = 1) -> torch.Tensor:
    """``n`` independently augmented views of every image, float [0, 1], stacked as ``(n * B, 3, size, size)``;
    under torch.distributed each rank draws its rows of the global batch's parameters, so the run augments
    as a single process would."""
    return augment(images, cfg, size, generator, shard=(rank(), world_size()), views=n)


def augmented_tiles(images: torch.Tensor, cfg: AugmentConfig, size: int, generator: torch.Generator, side: int,
                    out: int | None = None) -> Callable[..., torch.Tensor]:
    """:func:`~selfsup.data.augment.augment_tiles`: draws one augmented view of every image now and returns
    ``cut(boxes, finish=None)``, the ``side`` px tiles ``boxes`` ``(B, T, 4)`` of the views (drawn after this call)
    at ``out`` px, float [0, 1], cut straight from the images where the augmentation allows, then ``finish``ed;
    under torch.distributed each
    rank draws its rows of the global batch's views, as :func:`augmented` does."""
    return augment_tiles(images, cfg, size, generator, side, out, shard=(rank(), world_size()))


def augmented_views(images: torch.Tensor, cfg: AugmentConfig, size: int, generator: torch.Generator,
                    n: int = 2) -> torch.Tensor:
    """``n`` independently augmented views of every image, normalised, stacked as ``(n * B, 3, size, size)``."""
    with record_function("augment"):
        return prepare(augmented(images, cfg, size, generator, n))


def eval_view(images: torch.Tensor, size: int) -> torch.Tensor:
    """The evaluation transform: resize only, then normalise."""
    return prepare(resize(images, size))
