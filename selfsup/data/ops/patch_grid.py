"""Batched patch-grid ops of Contrastive Predictive Coding (van den Oord, Li, Vinyals, "Representation Learning
with Contrastive Predictive Coding", arXiv 2018; Hénaff et al., "Data-Efficient Image Recognition with Contrastive
Predictive Coding", ICML 2020): every image cut into a grid of overlapping square patches (one strided view and one
copy for the whole batch), and CPC v2's per-patch augmentation, a random flip and colour dropping per patch."""

from __future__ import annotations

from torch import Tensor

from selfsup.data.ops.color import hflip
from selfsup.data.ops.patches import drop_channels
from selfsup.errors import UserError


def grid_geometry(size: int, grid: int = 7, patch: int | None = None, stride: int | None = None) -> tuple[int, int]:
    """Patch side and stride ``(P, S)`` of a ``grid`` x ``grid`` grid of patches in ``size`` px images.

    ``S`` defaults to ``P // 2`` (patches overlapping by half, as the papers' 64 px patches at stride 32), ``P``
    to the largest side whose grid spans at most the image, ``(grid - 1) * S + P <= size``: the papers' 64 / 32
    px at 256 px, 56 / 28 at 224, 8 / 4 at 32 and 4 / 2 at 16 px for a 7 x 7 grid. Refused: a grid below 1 x 1,
    a patch below 1 px or larger than the image, a stride below 1, or a grid that does not fit.
    """
    if grid < 1:
        raise UserError(f"a patch grid needs at least 1 x 1 patches, got grid={grid}")
    if patch is None:
        patch = next((p for p in range(size, 0, -1)
                      if (grid - 1) * (max(1, p // 2) if stride is None else stride) + p <= size), 0)
        if not patch:
            raise UserError(f"a {grid} x {grid} patch grid does not fit {size} px images")
    stride = max(1, patch // 2) if stride is None else stride
    if not 1 <= patch <= size or stride < 1:
        raise UserError(f"a {patch} px patch at stride {stride} does not fit {size} px images")
    if (grid - 1) * stride + patch > size:
        raise UserError(f"a {grid} x {grid} grid of {patch} px patches at stride {stride} spans "
                        f"{(grid - 1) * stride + patch} px, more than the {size} px images")
    return patch, stride


def patch_grid(images: Tensor, patch: int, stride: int, grid: int) -> Tensor:
    """The ``grid`` x ``grid`` patches ``(B, grid * grid, C, patch, patch)`` of ``images`` ``(B, C, H, W)``, row-major:
    patch ``(i, j)`` starts at ``(top + i * stride, left + j * stride)``, where the grid's ``(grid - 1) * stride +
    patch`` px square window is centred in the image (rounded towards the top left). Two ``unfold`` views and
    one copy for the whole batch."""
    *_, height, width = images.shape
    span = (grid - 1) * stride + patch
    if span > min(height, width):
        raise UserError(f"a {grid} x {grid} grid of {patch} px patches at stride {stride} does not fit "
                        f"{height} x {width} images")
    top, left = (height - span) // 2, (width - span) // 2
    window = images[..., top : top + span, left : left + span]
    cells = window.unfold(-2, patch, stride).unfold(-2, patch, stride)  # (B, C, grid, grid, patch, patch)
    return cells.permute(0, 2, 3, 1, 4, 5).reshape(len(images), grid * grid, images.shape[1], patch, patch)


def augment_patches(patches: Tensor, flips: Tensor | None, keep: Tensor | None) -> Tensor:
    """Every patch of ``patches`` ``(B, T, C, h, w)`` mirrored left-right where ``flips`` ``(B, T)``, then, with
    ``keep`` ``(B, T)``, colour dropping: every channel but ``keep`` set to zero ("randomly drops two of the three
    colour channels in each patch", CPC v2). Applied to ImageNet-normalised patches, a dropped channel is the data
    set's mean. The flip and the dropping of :mod:`~selfsup.data.ops.color` and :mod:`~selfsup.data.ops.patches`
    over the flattened ``(B * T, C, h, w)`` patches. CPC v2 draws both per patch, independently: ``flips`` from
    :func:`~selfsup.data.ops.color.sample_flags` (``B * T`` of them), ``keep`` from
    :func:`~selfsup.data.ops.patches.sample_kept_channel`."""
    if flips is not None:
        patches = hflip(patches.flatten(0, 1), flips.flatten()).view_as(patches)
    return patches if keep is None else drop_channels(patches, keep)
