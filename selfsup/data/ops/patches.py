"""Batched patch-pair ops of context prediction (Doersch, Gupta, Efros, "Unsupervised Visual Representation
Learning by Context Prediction", ICCV 2015): a centre patch and one of its 8 neighbours per sample, separated by
a gap and jittered so that edges and textures cannot be continued across, and the guards against chromatic
aberration (colour dropping, projection towards grey). The pairs of the whole batch are cropped in one
``grid_sample``: from the augmented views (:func:`selfsup.data.ops.tiles.crop_tiles`), or straight from the
images through a random resized crop and flip (:func:`crop_view_tiles`)."""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.data.ops.base import Device, constant, move
from selfsup.data.ops.crop import source_coords
from selfsup.errors import UserError

#: the neighbour's position relative to the centre patch, by label (row-major around the centre, as the paper's
#: Figure 2 numbers them 1-8)
POSITIONS = ("top-left", "top", "top-right", "left", "right", "bottom-left", "bottom", "bottom-right")
#: (rows, columns) steps of each label's neighbour
OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def pair_geometry(size: int, patch_frac: float | None = None, gap_frac: float = 0.5,
                  jitter_frac: float = 7 / 96) -> tuple[int, int, int]:
    """Patch side, gap and maximal jitter in pixels, ``(P, G, J)``, for images whose shorter side is ``size``.

    ``G = round(P * gap_frac)`` and ``J = round(P * jitter_frac)`` (Python's ``round``): the paper's 96 px
    patches, 48 px gap and jitter of up to 7 px are ``gap_frac = 0.5`` and ``jitter_frac = 7 / 96``. ``P =
    round(size * patch_frac)``, or with ``patch_frac=None`` the largest ``P`` whose pair fits the image however
    it is drawn, ``2 P + G + 2 J <= size``: 12 / 6 / 1 px at 32 px, 24 / 12 / 2 at 64 px, 36 / 18 / 3 at 96 px and
    the paper's 96 / 48 / 7 at 255 px. Refused: a pair that does not fit, ``2 J > G`` (patches that could touch)
    or ``2 J >= P`` (a neighbour that could straddle two positions).
    """
    if gap_frac < 0 or not 0 <= jitter_frac < 0.5:
        raise UserError(f"context patches need gap_frac >= 0 and jitter_frac in [0, 0.5), got {gap_frac}, "
                        f"{jitter_frac}")
    if patch_frac is not None and not 0 < patch_frac <= 0.5:
        raise UserError(f"the context patch fraction must be in (0, 0.5], got {patch_frac}")

    def parts(p: int) -> tuple[int, int, int]:
        return p, round(p * gap_frac), round(p * jitter_frac)

    def fits(p: int) -> bool:
        return 2 * p + parts(p)[1] + 2 * parts(p)[2] <= size

    if patch_frac is None:
        patch = next((p for p in range(size // 2, 0, -1) if fits(p)), 0)
    else:
        patch = round(size * patch_frac)
    p, g, j = parts(patch)
    if p < 1 or not fits(p):
        raise UserError(f"a pair of {p} px patches with a {g} px gap and {j} px jitter does not fit {size} px images")
    if 2 * j > g or 2 * j >= p:
        raise UserError(f"context patches: the jitter ({j} px) must be at most half the gap ({g} px) and below half "
                        f"the patch ({p} px)")
    return p, g, j


def sample_patch_pairs(batch: int, height: int, width: int, patch: int, gap: int, jitter: int,
                       generator: torch.Generator | None = None, device: Device = None) -> Tensor:
    """Per-sample boxes ``(B, 2, 4)`` = (top, left, h, w) in whole pixels, as float: the centre patch, then its
    neighbour, both ``patch`` x ``patch``.

    Drawn in this order from ``generator``: the neighbour's label, uniform on the 8 :data:`POSITIONS`
    (``torch.randint``), then 6 float64 uniforms ``u`` per sample. Each patch is jittered by
    ``floor(u * (2 J + 1)) - J`` pixels per axis (``u[:, 0:2]`` the centre's (row, column), ``u[:, 2:4]`` the
    neighbour's), so the neighbour sits at ``step * (patch + gap) + its jitter - the centre's`` from the centre
    (``step`` in {-1, 0, 1} per axis, :data:`OFFSETS`) and the gap between them is ``gap +- 2 jitter``. The
    pair's bounding box is then placed uniformly in the image (``u[:, 4:6]``, like torchvision's crop offsets):
    the centre patch is uniform over the places where the pair fits, as the paper samples its first patch.
    """
    if 2 * jitter > gap or 2 * jitter >= patch or 2 * patch + gap + 2 * jitter > min(height, width):
        raise UserError(f"a pair of {patch} px patches with a {gap} px gap and {jitter} px jitter does not fit "
                        f"{height} x {width} images")
    on = generator.device if generator is not None else None
    label = torch.randint(len(OFFSETS), (batch,), generator=generator, device=on)
    u = torch.rand((batch, 6), generator=generator, device=on, dtype=torch.float64)
    jit = (u[:, :4] * (2 * jitter + 1)).floor_().clamp_(max=2 * jitter) - jitter
    steps = constant(OFFSETS, torch.float64, label.device)[label]  # (B, 2): rows, columns
    offset = steps * (patch + gap) + jit[:, 2:] - jit[:, :2]  # neighbour minus centre
    room = u.new_tensor([height, width]) - patch - offset.abs() + 1
    start = (u[:, 4:] * room).floor_().minimum(room - 1)  # the pair's bounding box
    centre = start + (-offset).clamp(min=0)
    sides = torch.full_like(centre, float(patch))
    boxes = torch.stack([torch.cat([centre, sides], 1), torch.cat([centre + offset, sides], 1)], 1)
    return move(boxes.to(torch.float32), device)


def neighbour_position(boxes: Tensor) -> Tensor:
    """The label ``(B,)`` int64 (an index of :data:`POSITIONS`) of every pair ``(B, 2, 4)`` of equal square boxes:
    per axis, the neighbour is before the centre patch if it ends where or before the centre starts, after it
    if it starts where or after the centre ends, else level with it."""
    offset, side = boxes[:, 1, :2] - boxes[:, 0, :2], boxes[:, 0, 2:3]
    step = (offset >= side).long() - (offset <= -side).long()  # (B, 2) in {-1, 0, 1}
    cell = (step[:, 0] + 1) * 3 + step[:, 1] + 1  # row-major cell of the 3 x 3 grid, 4 the centre
    return cell - (cell > 4).long()


def crop_view_tiles(images: Tensor, view_boxes: Tensor, flips: Tensor | None, view_size: int, boxes: Tensor,
                    side: int, channels: Tensor | None = None) -> Tensor:
    """The tiles ``boxes`` ``(B, T, 4)`` (whole pixels, ``side`` x ``side``) of the views that a random resized
    crop to ``view_boxes`` ``(B, 4)`` at ``view_size`` and a flip where ``flips`` ``(B,)`` make of ``images``
    ``(B, C, H, W)`` (uint8 values or float), without making the views: float32 ``(B, T, C, side, side)``,
    contiguous, in the images' value range; with ``channels`` ``(B, T)`` only that channel of each tile,
    ``(B, T, 1, side, side)``.

    Equal to ``crop_tiles(hflip(resized_crop(images, view_boxes, view_size), flips), boxes, side)`` (ops
    :mod:`~selfsup.data.ops.crop`, :mod:`~selfsup.data.ops.color`, :mod:`~selfsup.data.ops.tiles`): every tile
    pixel is the view's bilinear sample of ``images``, at the same source coordinates (the view's sampling grid
    rows and, mirrored where flipped, columns), in one ``grid_sample`` over the tiles' pixels only. Two 36 px
    patches of a 96 px view are a quarter of its pixels, jigsaw's nine 24 px tiles 56%. With ``channels`` each
    tile samples its one image plane (colour dropping keeps one channel of three: a third of the work). The tiles
    of both methods' views are cut with it by :func:`selfsup.data.augment.augment_tiles`.
    """
    batch, planes, height, width = images.shape
    tiles = boxes.shape[1]
    top, left, h, w = view_boxes.to(images.device, torch.float32).unbind(1)
    ys, xs = source_coords(top, h, view_size, height), source_coords(left, w, view_size, width)  # (B, view_size)
    if flips is not None:  # a flipped view's column x is the unflipped view's column view_size - 1 - x
        xs = torch.where(flips.to(images.device).view(-1, 1), xs.flip(1), xs)
    span = torch.arange(side, device=images.device)
    corners = boxes.to(images.device).long()
    rows = ys.gather(1, (corners[..., 0:1] + span).view(batch, -1))  # (B, T * side)
    cols = xs.gather(1, (corners[..., 1:2] + span).view(batch, -1))
    grid = torch.empty(batch, tiles, side, side, 2, device=images.device)  # in place: no expanded copies to stack
    grid[..., 0] = cols.view(batch, tiles, 1, side)
    grid[..., 1] = rows.view(batch, tiles, side, 1)
    sample = partial(F.grid_sample, mode="bilinear", padding_mode="border", align_corners=False)
    if channels is not None:  # one plane per tile, picked before any conversion: (B * T, 1, H, W)
        first = torch.arange(batch, device=images.device).view(-1, 1) * planes
        picked = images.reshape(-1, height, width).index_select(0, (first + channels.to(images.device)).view(-1))
        return sample(picked.unsqueeze(1).float(), grid.view(-1, side, side, 2)).view(batch, tiles, 1, side, side)
    sampled = sample(images.float(), grid.view(batch, tiles * side, side, 2))
    return sampled.view(batch, planes, tiles, side, side).transpose(1, 2).contiguous()


def sample_kept_channel(batch: int, patches: int = 2, channels: int = 3, generator: torch.Generator | None = None,
                        device: Device = None) -> Tensor:
    """The channel each patch keeps under colour dropping, ``(B, patches)`` int64, uniform on the channels and
    independent between patches ("from each patch", Doersch et al. 2015)."""
    on = generator.device if generator is not None else None
    return move(torch.randint(channels, (batch, patches), generator=generator, device=on), device)


def sample_noise(shape: tuple[int, ...], generator: torch.Generator | None = None, device: Device = None) -> Tensor:
    """Standard normal draws of ``shape`` (float32), on the generator's device, then moved."""
    on = generator.device if generator is not None else None
    return move(torch.randn(shape, generator=generator, device=on), device)


def _channel_rows(keep: Tensor, channels: int) -> tuple[Tensor, Tensor]:
    """Over the ``(N * C, h, w)`` planes of N patches: the row of each patch's kept channel ``keep`` ``(N,)`` and
    the rows ``(N, C - 1)`` of its other channels, in channel order."""
    first = torch.arange(len(keep), device=keep.device) * channels  # each patch's first plane
    others = torch.arange(channels - 1, device=keep.device)
    return first + keep, first[:, None] + others + (others >= keep[:, None]).long()


def drop_channels(patches: Tensor, keep: Tensor, noise: Tensor | None = None, scale: float = 0.01) -> Tensor:
    """Colour dropping (Doersch et al., ICCV 2015, section 3): every patch ``(..., C, h, w)`` keeps its channel
    ``keep`` ``(...)``; the others, in channel order, become ``noise`` ``(..., C - 1, h, w)`` (standard normal)
    times ``scale`` times the kept channel's standard deviation over the patch ("Gaussian noise, standard
    deviation ~1/100 the standard deviation of the remaining channel"), or zero without noise. The paper's guard
    against chromatic aberration, which shifts the colour channels apart towards the image borders and would give
    away where a patch was. Whole channel planes are selected and written by row index (``index_select``,
    ``index_copy_``) over the ``(N * C, h, w)`` planes."""
    *_, channels, h, w = patches.shape
    planes = patches.reshape(-1, h, w)
    keep = keep.to(patches.device).reshape(-1)
    kept_rows, dropped_rows = _channel_rows(keep, channels)
    kept = planes.index_select(0, kept_rows)
    if noise is None:
        out = torch.zeros_like(planes)
    else:
        centred = kept - kept.mean((-2, -1), keepdim=True)  # the population std as a norm: 20x torch.std on CPU
        std = torch.linalg.vector_norm(centred, dim=(-2, -1), keepdim=True) / math.sqrt(h * w)
        fill = noise.to(patches).reshape(len(keep), channels - 1, h, w) * (std * scale).unsqueeze(1)
        out = torch.empty_like(planes).index_copy_(0, dropped_rows.flatten(), fill.view(-1, h, w))
    return out.index_copy_(0, kept_rows, kept).view(patches.shape)


def _centred(x: Tensor) -> tuple[Tensor, Tensor]:
    """Every map of ``x`` ``(..., h, w)`` minus its mean, and its mean square ``(..., 1, 1)`` (as a vector norm:
    several times faster than ``torch.var_mean`` on CPU)."""
    centred = x - x.mean((-2, -1), keepdim=True)
    norm = torch.linalg.vector_norm(centred, dim=(-2, -1), keepdim=True)
    return centred, norm.square_() / (x.shape[-2] * x.shape[-1])


def dropped_patches(kept: Tensor, keep: Tensor, noise: Tensor | None = None, scale: float = 0.01,
                    channels: int = 3, eps: float = 1e-5) -> Tensor:
    """``standardise_patches(drop_channels(patches, keep, noise, scale), eps)`` from the kept channel alone:
    ``kept`` ``(..., 1, h, w)`` is channel ``keep`` ``(...)`` of each patch, ``noise`` ``(..., C - 1, h, w)``;
    returns ``(..., C, h, w)``. The sums that standardising needs come from the kept channel and the noise
    separately (a centred noise channel is the centred noise times ``scale * std``), and each output plane is
    written once, by row index over the ``(N * C, h, w)`` planes."""
    h, w = kept.shape[-2:]
    shape = (*kept.shape[:-3], channels, h, w)
    centred, var = _centred(kept)  # (..., 1, h, w), (..., 1, 1, 1)
    kept_rows, dropped_rows = _channel_rows(keep.to(kept.device).reshape(-1), channels)
    if noise is None:
        out, norm = kept.new_zeros(shape), torch.rsqrt(var / channels + eps * eps)
    else:
        out, amplitude = kept.new_empty(shape), var.sqrt() * scale
        noise, noise_var = _centred(noise)  # (..., C - 1, h, w), (..., C - 1, 1, 1)
        norm = torch.rsqrt((var + amplitude.square() * noise_var.sum(-3, keepdim=True)) / channels + eps * eps)
        out.view(-1, h, w).index_copy_(0, dropped_rows.flatten(), noise.mul_(amplitude * norm).view(-1, h, w))
    out.view(-1, h, w).index_copy_(0, kept_rows, centred.mul_(norm).view(-1, h, w))
    return out


def project_chroma(images: Tensor) -> Tensor:
    """Projection (Doersch et al., ICCV 2015, section 3): every RGB pixel of ``(..., 3, h, w)`` minus its
    component along the green-magenta axis ``a = (-1, 2, -1)``, ``x - a (a . x) / (a . a)``: the colour axis that
    chromatic aberration shifts the most is removed, the others and grey are kept."""
    a = constant((-1.0, 2.0, -1.0), images.dtype, images.device)
    along = torch.einsum("c,...chw->...hw", a, images).unsqueeze(-3) / 6.0
    return images - a.view(3, 1, 1) * along


def standardise_patches(patches: Tensor, eps: float = 1e-5) -> Tensor:
    """Every patch ``(..., C, h, w)`` minus its own mean per channel, then divided by its root mean square over
    all channels and pixels, ``sqrt(mean(x^2) + eps^2)``: the authors' release centres each patch and fixes its
    variance "so that gradients are a less useful cue"; one scale for all channels keeps their ratios (colour),
    and a dropped channel's noise stays small. A constant patch becomes 0. The sum of squares as a vector norm:
    as fast as ``F.layer_norm`` on CPU, and exported to ONNX with a dynamic batch axis."""
    centred = patches - patches.mean((-2, -1), keepdim=True)
    size = centred.shape[-3] * centred.shape[-2] * centred.shape[-1]
    mean_square = torch.linalg.vector_norm(centred, dim=(-3, -2, -1), keepdim=True).square() / size
    return centred * torch.rsqrt(mean_square + eps * eps)
