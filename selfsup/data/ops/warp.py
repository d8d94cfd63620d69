"""Random affine and projective warps as one ``grid_sample`` over the batch, with the transforms' matrices as the
regression targets of AET (Zhang, Qi, Wang, Luo, "AET vs. AED: Unsupervised Representation Learning by
Auto-Encoding Transformations rather than Data", CVPR 2019).

A transform is a 3 x 3 matrix ``M`` acting on normalised coordinates (``grid_sample``'s with
``align_corners=False``: x and y in [-1, 1] across the image's edges, y pointing down), mapping a point of the
input to where it lands in the output; ``M[2, 2] = 1``. The same matrix fits any image size, and its entries are
of order one, so they can be regressed as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.data.ops.base import Device, move, uniform

#: the image's corners in normalised coordinates (x, y): top-left, top-right, bottom-right, bottom-left
CORNERS = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))


def sample_affine(batch: int, degrees: float = 180.0, translate: float = 0.2, scale: tuple[float, float] = (0.7, 1.3),
                  shear: float = 30.0, generator: torch.Generator | None = None, device: Device = None) -> Tensor:
    """Per-sample affine parameters ``(B, 5)`` = (angle in degrees, horizontal and vertical translation as
    fractions of the image's width and height, scale factor, shear angle in degrees), each uniform on
    [-degrees, degrees], [-translate, translate], ``scale`` and [-shear, shear]: AET's affine transforms
    (torchvision's ``RandomAffine(180, (0.2, 0.2), (0.7, 1.3), 30)``, drawn in float64)."""
    angle = uniform((batch, 1), -degrees, degrees, generator, torch.float64)
    shift = uniform((batch, 2), -translate, translate, generator, torch.float64)
    factor = uniform((batch, 1), scale[0], scale[1], generator, torch.float64)
    slant = uniform((batch, 1), -shear, shear, generator, torch.float64)
    return move(torch.cat([angle, shift, factor, slant], 1), device)


def affine_matrices(params: Tensor) -> Tensor:
    """The matrices ``(B, 3, 3)`` of the affine parameters ``(B, 5)`` of :func:`sample_affine`, in the dtype of
    ``params``: ``M = T(t) R(angle) S(scale) Sh(shear)`` about the image centre, the transform of
    ``torchvision.transforms.v2.functional.affine(img, angle, [tx * W, ty * H], scale, [shear, 0])`` (a positive
    angle turns the image clockwise; ``Sh = [[1, -tan(shear)], [0, 1]]``). A translation by a fraction ``t`` of
    the size is ``2 t`` in normalised coordinates."""
    angle, tx, ty, factor, slant = params.unbind(1)
    a, s = torch.deg2rad(angle), torch.tan(torch.deg2rad(slant))
    cos, sin = torch.cos(a) * factor, torch.sin(a) * factor
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    rows = [cos, -cos * s - sin, 2 * tx, sin, -sin * s + cos, 2 * ty, zero, zero, one]
    return torch.stack(rows, 1).view(-1, 3, 3)


def sample_corners(batch: int, shift: float = 0.125, scale: tuple[float, float] = (0.8, 1.2),
                   generator: torch.Generator | None = None, device: Device = None) -> Tensor:
    """Per-sample destinations ``(B, 4, 2)`` of the image's :data:`CORNERS` (normalised x, y) under AET's
    projective transforms: the image scaled about its centre by a factor uniform on ``scale``, turned clockwise
    by a multiple of 90 degrees uniform on {0, 90, 180, 270} (corner ``i`` lands where corner ``i + k`` was), and
    every corner then moved by up to ``shift`` of the width and height, uniformly and independently per axis
    (in float64)."""
    factor = uniform((batch, 1, 1), scale[0], scale[1], generator, torch.float64)
    on = generator.device if generator is not None else None
    turns = torch.randint(4, (batch, 1), generator=generator, device=on)
    moves = uniform((batch, 4, 2), -2 * shift, 2 * shift, generator, torch.float64)
    corners = torch.tensor(CORNERS, dtype=torch.float64, device=factor.device)
    turned = corners[(torch.arange(4, device=factor.device) + turns) % 4]  # (B, 4, 2)
    return move(turned * factor + moves, device)


def homographies(corners: Tensor) -> Tensor:
    """The projective matrices ``(B, 3, 3)`` (``M[2, 2] = 1``) that take the image's :data:`CORNERS` to
    ``corners`` ``(B, 4, 2)``: the 8 x 8 linear system of the four correspondences, solved for the batch at once
    (``solve_ex``: no host synchronisation on the GPU)."""
    b = corners.shape[0]
    src = torch.tensor(CORNERS, dtype=corners.dtype, device=corners.device).expand(b, 4, 2)
    x, y = src.unbind(2)
    u, v = corners.unbind(2)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    # u (g x + h y + 1) = a x + b y + c and v (g x + h y + 1) = d x + e y + f, for every corner
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], 2)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], 2)
    system = torch.cat([rows_u, rows_v], 1)  # (B, 8, 8)
    coefficients = torch.linalg.solve_ex(system, torch.cat([u, v], 1))[0]
    return torch.cat([coefficients, one[:, :1]], 1).view(b, 3, 3)


def transform_parameters(matrices: Tensor, projective: bool) -> Tensor:
    """AET's regression targets: the first two rows of the (affine) matrices ``(B, 6)``, or the 8 free entries of
    the projective ones ``(B, 8)``, after scaling every matrix to ``M[2, 2] = 1``."""
    m = (matrices / matrices[:, 2:, 2:]).flatten(1)
    return m[:, :8] if projective else m[:, :6]


def warp(images: Tensor, matrices: Tensor) -> Tensor:
    """Every image ``(B, C, H, W)`` through its transform ``matrices[b]`` (input -> output, normalised
    coordinates): output pixel ``p`` shows the input at ``M^-1 p`` (after the perspective division), bilinearly
    interpolated, 0 outside the image. One ``F.grid_sample`` for the batch; the matrices are inverted in float64.

    Matches ``torchvision.transforms.v2.functional.affine`` (with :func:`affine_matrices`) and ``perspective``
    (the corners to :func:`sample_corners`' destinations) image by image with bilinear interpolation and no fill.
    """
    b, _, h, w = images.shape
    inverse = torch.linalg.inv_ex(matrices.to(images.device, torch.float64))[0]
    xs = torch.arange(w, device=images.device, dtype=torch.float64).mul_(2.0 / w).add_(1.0 / w - 1.0)
    ys = torch.arange(h, device=images.device, dtype=torch.float64).mul_(2.0 / h).add_(1.0 / h - 1.0)
    points = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, dtype=torch.float64,
                                                                                 device=images.device)], 2)
    source = points.view(1, h * w, 3) @ inverse.transpose(1, 2)  # (B, H * W, 3)
    grid = (source[..., :2] / source[..., 2:]).view(b, h, w, 2).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

