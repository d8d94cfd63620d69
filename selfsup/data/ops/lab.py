"""Batched sRGB <-> CIE Lab conversion (D65 white point, 2-degree observer), the colour space of colourisation
as a pretext task (Zhang, Isola, Efros, "Colorful Image Colorization", ECCV 2016), of split-brain autoencoders
(Zhang et al., CVPR 2017) and of CMC's L / ab views (Tian et al., ECCV 2020).

The constants and piecewise curves are those of ``skimage.color.rgb2lab`` / ``lab2rgb``, which the
reference colourisation code used; the tests check parity image by image to ~1e-4. Channels are dim -3, so
``(B, 3, H, W)`` batches and single ``(3, H, W)`` images both work, on any device, in float32 (float64 inputs
stay float64); autocast is disabled inside, so a bf16 region changes nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.data.ops.base import constant

# sRGB primaries -> CIE XYZ (IEC 61966-2-1, skimage's ``xyz_from_rgb``) and the D65 white, 2-degree observer.
XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                (0.212671, 0.715160, 0.072169),
                (0.019334, 0.119193, 0.950227))
D65_WHITE = (0.95047, 1.0, 1.08883)

_M = torch.tensor(XYZ_FROM_RGB, dtype=torch.float64)
_WHITE = torch.tensor(D65_WHITE, dtype=torch.float64)
# the division by (and multiplication with) the white point folded into the matrices
_WHITE_XYZ_FROM_RGB = tuple((_M / _WHITE[:, None]).flatten().tolist())
_RGB_FROM_WHITE_XYZ = tuple((torch.linalg.inv(_M) * _WHITE[None, :]).flatten().tolist())

_EPSILON = 0.008856  # CIE (6/29)^3 as skimage rounds it
_CUBE_ROOT_EPSILON = 0.2068966  # 6/29, the same threshold on the f(t) side
_KAPPA = 7.787  # slope of the linear part of f(t) = t / (3 (6/29)^2) + 4/29
# (L, a, b) = _LAB_FROM_F @ (f(X), f(Y), f(Z)) + (-16, 0, 0), and its inverse up to the offset 16/116
_LAB_FROM_F = (0.0, 116.0, 0.0, 500.0, -500.0, 0.0, 0.0, 200.0, -200.0)
_F_FROM_LAB = (1 / 116, 1 / 500, 0.0, 1 / 116, 0.0, 0.0, 1 / 116, 0.0, -1 / 200)


def _working(x: Tensor) -> Tensor:
    """The input in the dtype the conversion runs in: float64 stays, anything else becomes float32."""
    return x if x.dtype == torch.float64 else x.float()


def _mix(matrix: tuple[float, ...], x: Tensor) -> Tensor:
    """A 3x3 colour matrix applied to the channels (dim -3) of ``x``."""
    m = constant(matrix, x.dtype, x.device).view(3, 3)
    return torch.einsum("ij,...jhw->...ihw", m, x)


def rgb_to_lab(images: Tensor) -> Tensor:
    """sRGB in [0, 1], channels at dim -3 -> CIE Lab: L in [0, 100], a in ~[-86, 98], b in ~[-108, 94].

    Inverse sRGB companding, XYZ, then ``f(t) = t^(1/3)`` above (6/29)^3 and linear below; ``L = 116 f(Y) -
    16``, ``a = 500 (f(X) - f(Y))``, ``b = 200 (f(Y) - f(Z))`` with XYZ relative to the D65 white
    (skimage ``rgb2lab`` with its defaults). Branches are masked with ``torch.where`` on clamped inputs, so
    gradients stay finite.
    """
    with torch.autocast(images.device.type, enabled=False):
        x = _working(images)
        linear = torch.where(x > 0.04045, x.clamp(min=0.04045).add_(0.055).div_(1.055).pow_(2.4), x / 12.92)
        t = _mix(_WHITE_XYZ_FROM_RGB, linear)
        f = torch.where(t > _EPSILON, t.clamp(min=_EPSILON).pow_(1.0 / 3.0), t.mul(_KAPPA).add_(16.0 / 116.0))
        lab = _mix(_LAB_FROM_F, f)
        lab.select(-3, 0).sub_(16.0)
        return lab


def lab_to_rgb(lab: Tensor) -> Tensor:
    """CIE Lab, channels at dim -3 -> sRGB clipped to [0, 1] (skimage ``lab2rgb``).

    As skimage: a negative ``f(Z)`` (very large b) is set to 0 before the inverse curve, and out-of-gamut
    colours are clipped channel by channel after companding.
    """
    with torch.autocast(lab.device.type, enabled=False):
        f = _mix(_F_FROM_LAB, _working(lab)).add_(16.0 / 116.0)
        f.select(-3, 2).clamp_(min=0.0)
        t = torch.where(f > _CUBE_ROOT_EPSILON, f.clamp(min=_CUBE_ROOT_EPSILON).pow_(3),
                        f.sub(16.0 / 116.0).div_(_KAPPA))
        linear = _mix(_RGB_FROM_WHITE_XYZ, t)
        srgb = torch.where(linear > 0.0031308, linear.clamp(min=0.0031308).pow_(1 / 2.4).mul_(1.055).sub_(0.055),
                           linear * 12.92)
        return srgb.clamp_(0.0, 1.0)
