"""The SimCLR augmentation recipe over the batched ops of :mod:`selfsup.data.ops`, with per-sample random
parameters, on whatever device the batch is on (Chen et al., "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020), and the tiles of such views cut straight from the images (:func:`augment_tiles`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from selfsup.data.ops.base import accelerated, gray, move, to_float, update_subset
from selfsup.data.ops.blur import gaussian_blur, sample_gaussian_blur
from selfsup.data.ops.color import (
    ColorJitterParams,
    color_jitter,
    grayscale,
    hflip,
    sample_color_jitter,
    sample_flags,
    solarize,
)
from selfsup.data.ops.crop import resized_crop, sample_resized_crop
from selfsup.data.ops.patches import crop_view_tiles
from selfsup.data.ops.tiles import crop_tiles, select_tile_channels

#: images per slice when tiles are cut straight from the images on the CPU: bounds the temporaries of large batches;
#: at batch 256 one slice is fastest (jigsaw and context views at 96 px 1.3x the speed of slices of 32; measured
#: after context prediction began to sample one channel per patch)
TILE_CHUNK = 256
#: what :func:`augment_tiles`' ``cut`` applies to the tiles of the images ``rows`` (a slice) once they are cut
Finish = Callable[[Tensor, slice], Tensor]


@dataclass
class AugmentConfig:
    """Parameters of :func:`augment`. The defaults are SimCLR's CIFAR-10 recipe (Chen et al., ICML 2020,
    appendix B.9): random resized crop, flip, colour jitter of strength 0.5 (0.4, 0.4, 0.4, 0.1) with
    p = 0.8, grayscale with p = 0.2, and no blur.

    ``blur_kernel_frac``: the blur kernel is the odd size closest to ``frac * size``, at least 3 (SimCLR's
    ImageNet recipe uses 10% of the image side with sigma in [0.1, 2.0]).
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_frac: float = 0.1
    solarize_p: float = 0.0

    def blur_kernel_size(self, size: int) -> int:
        """The odd kernel size closest to ``blur_kernel_frac * size``, at least 3."""
        return max(3, 2 * round((self.blur_kernel_frac * size - 1) / 2) + 1)


def augment(images: Tensor, cfg: AugmentConfig, size: int, generator: torch.Generator,
            shard: tuple[int, int] = (0, 1), views: int = 1) -> Tensor:
    """``views`` random views of every image: RRC -> flip -> colour jitter -> grayscale -> blur -> solarize.

    ``images`` is a uint8 (or float [0, 1]) batch ``(B, 3, H, W)``; returns float ``(views * B, 3, size,
    size)`` in [0, 1] on the same device, view by view, each view independently augmented. On an
    accelerator all views go through the ops together (one kernel launch per op, not one per op and view;
    see :func:`accelerated`). Parameters are drawn from
    ``generator``, on its own device (a CPU generator with a CUDA batch works: the parameters are moved
    over); ops whose probability is 0 draw nothing.

    ``shard=(rank, world)``: the parameters are drawn for the global batch of ``world * B`` images and
    this rank keeps its rows, so N processes augment every sample exactly as one process would.
    """
    with torch.autocast(images.device.type, enabled=False):  # exact float32 ops, also inside a bf16 step
        return _augment(images, cfg, size, generator, shard, views)


def _shard_rows(batch: int, views: int, rank: int, world: int, device: torch.device) -> slice | Tensor:
    """This rank's rows of parameters drawn for ``views * world * batch`` samples laid out view by view,
    each view rank by rank (the layout one process with the global batch has)."""
    if world == 1:
        return slice(None)
    if views == 1:
        return slice(rank * batch, (rank + 1) * batch)
    starts = torch.arange(views, device=device) * (world * batch) + rank * batch
    return (starts[:, None] + torch.arange(batch, device=device)).flatten()


@dataclass
class _Draws:
    """Every random parameter of one :func:`augment` call, a row per output sample (None: the op is off)."""

    boxes: Tensor
    flip: Tensor | None
    jitter: ColorJitterParams | None
    jitter_on: Tensor | None
    gray: Tensor | None
    blur_sigma: Tensor | None
    blur_on: Tensor | None
    solarize: Tensor | None

    def take(self, rows: slice | Tensor) -> _Draws:
        """The parameters of some rows (a slice or an index tensor)."""
        values = (getattr(self, f.name) for f in fields(self))
        return _Draws(*(v if v is None else v.take(rows) if isinstance(v, ColorJitterParams) else v[rows]
                        for v in values))


def _draw(total: int, height: int, width: int, cfg: AugmentConfig, generator: torch.Generator) -> _Draws:
    """Draw the parameters of ``total`` samples, op by op in the order the ops run."""
    def flags(p: float) -> Tensor | None:
        return sample_flags(total, p, generator) if p > 0 else None

    boxes = sample_resized_crop(total, height, width, cfg.crop_scale, cfg.crop_ratio, generator)
    flip = flags(cfg.flip_p)
    jitter = sample_color_jitter(total, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, generator) \
        if cfg.jitter_p > 0 else None
    jitter_on, gray = flags(cfg.jitter_p), flags(cfg.gray_p)
    blur_sigma = sample_gaussian_blur(total, cfg.blur_sigma, generator) if cfg.blur_p > 0 else None
    return _Draws(boxes, flip, jitter, jitter_on, gray, blur_sigma, flags(cfg.blur_p), flags(cfg.solarize_p))


def _apply(images: Tensor, d: _Draws, cfg: AugmentConfig, size: int) -> Tensor:
    """The ops of :func:`augment` with the parameters ``d`` (a row per image)."""
    x = resized_crop(to_float(images), move(d.boxes, images.device), size)
    if d.flip is not None:
        x = hflip(x, d.flip)
    if d.jitter is not None:
        x = color_jitter(x, d.jitter, d.jitter_on)
    if d.gray is not None:
        x = grayscale(x, d.gray)
    if d.blur_sigma is not None:
        x = gaussian_blur(x, d.blur_sigma, cfg.blur_kernel_size(size), d.blur_on)
    if d.solarize is not None:
        x = solarize(x, d.solarize)
    return x


def _augment(images: Tensor, cfg: AugmentConfig, size: int, generator: torch.Generator,
             shard: tuple[int, int], views: int) -> Tensor:
    batch, _, height, width = images.shape
    rank, world = shard
    draws = _draw(views * world * batch, height, width, cfg, generator)
    draws = draws.take(_shard_rows(batch, views, rank, world, generator.device))
    if not accelerated(images):
        return torch.cat([_apply(images, draws.take(slice(v * batch, (v + 1) * batch)), cfg, size)
                          for v in range(views)])
    return _apply(images.repeat(views, 1, 1, 1) if views > 1 else images, draws, cfg, size)


def augment_tiles(images: Tensor, cfg: AugmentConfig, size: int, generator: torch.Generator, side: int,
                  out: int | None = None, shard: tuple[int, int] = (0, 1)) -> Callable[..., Tensor]:
    """Tiles of one random view of every image, cut without making the views where the augmentation allows.

    Draws the views' parameters now, as ``augment(images, cfg, size, generator, shard)`` does, and returns
    ``cut(boxes)``: the tiles ``boxes`` ``(B, T, 4)`` (top, left, ``side``, ``side`` in whole pixels of the ``size`` x
    ``size`` views, drawn after this call: the generator's stream is that of augmenting, then drawing the boxes) of
    those views, resized to ``out`` (default ``side``) as :func:`~selfsup.data.ops.tiles.crop_tiles` does: float
    [0, 1] ``(B, T, 3, out, out)``, contiguous; ``cut(boxes, channels=...)`` only channel ``channels[b, t]`` of each
    tile, ``(B, T, 1, out, out)`` (colour dropping's kept channel). ``cut(boxes, finish)`` also applies
    ``finish(tiles, rows)`` (the tiles of the images ``rows``, a slice, to what replaces them: per-tile
    normalisation, colour dropping), on the CPU to up to :data:`TILE_CHUNK` images at a time.

    When the views are only cropped, flipped and turned grey and the tiles keep their size, the views are never
    made: the tiles are sampled straight from the images at the views' source coordinates, in one ``grid_sample``
    over the tiles' pixels (:func:`~selfsup.data.ops.patches.crop_view_tiles`; from the integer values, scaled to
    [0, 1] after; only the asked channel of each tile unless some are grey), and the flagged samples' tiles are
    turned grey (luma is linear per pixel, so it commutes with bilinear sampling): the same tiles up to float
    rounding, at a fraction of the cost. Colour jitter (its contrast blends with the whole view's mean), blur (it
    reaches across the tiles' edges), solarize or resized tiles (two bilinear resamplings) make the views first.
    """
    batch, _, height, width = images.shape
    rank, world = shard
    d = _draw(world * batch, height, width, cfg, generator).take(_shard_rows(batch, 1, rank, world, generator.device))
    on = images.device.type
    fused = out in (None, side) and d.jitter is None and d.blur_sigma is None and d.solarize is None
    with torch.autocast(on, enabled=False):
        views = None if fused else _apply(images, d, cfg, size)

    def cut(boxes: Tensor, finish: Finish | None = None, channels: Tensor | None = None) -> Tensor:
        with torch.autocast(on, enabled=False):  # exact float32 sampling, also inside a bf16 step
            if views is not None:
                tiles = select_tile_channels(crop_tiles(views, boxes, out or side), channels)
                return tiles if finish is None else finish(tiles, slice(None))
            direct = channels if d.gray is None else None  # grey tiles need all three channels first
            done = []
            step = TILE_CHUNK if on == "cpu" else batch  # CPU: bounded temporaries for large batches
            for i in range(0, batch, step):
                rows = slice(i, i + step)
                part = crop_view_tiles(images[rows], d.boxes[rows], None if d.flip is None else d.flip[rows], size,
                                       boxes[rows], side, None if direct is None else direct[rows])
                if not images.is_floating_point():
                    part.mul_(1.0 / 255.0)  # sampled from the integers, then scaled: one product per tile pixel
                if d.gray is not None:
                    per_tile = d.gray[rows, None].expand(-1, boxes.shape[1]).reshape(-1)
                    update_subset(part.flatten(0, 1), per_tile, lambda t: gray(t).expand_as(t))
                    part = select_tile_channels(part, None if channels is None else channels[rows])
                done.append(part if finish is None else finish(part, rows))
            return done[0] if len(done) == 1 else torch.cat(done)

    return cut
