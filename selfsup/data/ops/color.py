"""Per-sample flips, grayscale, solarize and colour jitter (torchvision semantics, batched)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from selfsup.data.ops.base import (
    Device,
    accelerated,
    blend,
    constant,
    gray,
    move,
    per_sample,
    select,
    uniform,
    update_subset,
)


def sample_flags(batch: int, p: float, generator: torch.Generator | None = None,
                 device: Device = None) -> Tensor:
    """Per-sample Bernoulli(p) flags (B,) bool, e.g. whether to flip or to apply a random op."""
    return move(uniform((batch,), 0.0, 1.0, generator) < p, device)


def hflip(images: Tensor, flags: Tensor) -> Tensor:
    """Mirror the samples whose flag is set left-right (torchvision ``horizontal_flip``)."""
    return select(flags, images.flip(-1), images)


def grayscale(images: Tensor, flags: Tensor) -> Tensor:
    """Replace the flagged samples by their luma on all 3 channels (torchvision ``rgb_to_grayscale``)."""
    return select(flags, gray(images).expand_as(images), images)


def solarize(images: Tensor, flags: Tensor, threshold: float = 0.5) -> Tensor:
    """Invert the pixels ``>= threshold`` of the flagged samples (torchvision ``solarize``)."""
    invert = per_sample(move(flags, images.device)) & (images >= threshold)
    return torch.where(invert, 1.0 - images, images)


def adjust_brightness(images: Tensor, factors: Tensor) -> Tensor:
    """Multiply each sample by its factor and clamp to [0, 1] (torchvision ``adjust_brightness``)."""
    return images.mul(per_sample(factors.to(images.dtype))).clamp_(0.0, 1.0)


def adjust_contrast(images: Tensor, factors: Tensor) -> Tensor:
    """Blend each sample with the mean of its grayscale image (torchvision ``adjust_contrast``)."""
    return blend(images, gray(images).mean((1, 2, 3), keepdim=True), factors)


def adjust_saturation(images: Tensor, factors: Tensor) -> Tensor:
    """Blend each sample with its grayscale image (torchvision ``adjust_saturation``)."""
    return blend(images, gray(images), factors)


def adjust_hue(images: Tensor, factors: Tensor) -> Tensor:
    """Rotate each sample's hue by its factor in [-0.5, 0.5] turns (torchvision ``adjust_hue``).

    torchvision converts RGB -> HSV (Pillow's hexagonal hue), shifts H and converts back. Value (max) and
    chroma (max - min) are unchanged by the shift, so the round trip is fused into closed form: with ``t``
    the shifted hue in turns, channel c is ``min + chroma * clamp(2 - 6 * ||frac(t + o_c)| - 1/2|, 0, 1)``
    for offsets ``o`` = 1/2, 1/6, -1/6 (R, G, B) -- the piecewise-linear map of torchvision's
    ``_hsv_to_rgb``; agrees with it to ~1e-6 (float32 rounding of the hue). Branches become 0/1
    arithmetic and most steps run in place: on CPU ``torch.where`` and fresh allocations cost more than
    the arithmetic.
    """
    r, g, b = images.unbind(1)
    maxc, minc = images.amax(1), images.amin(1)
    chroma = maxc - minc
    r_not_max, g_not_max = (maxc.unsqueeze(1) - images[:, :2]).sign_().unbind(1)
    # chroma * hue in sixths of a turn, by the channel holding the max with torchvision's priority R, G, B:
    # R: g - b, G: 2 chroma + b - r, B: 4 chroma + r - g
    hue_r = g - b
    hue = torch.sub(b, r).add_(chroma, alpha=2.0)
    hue.add_(torch.sub(r, g).add_(chroma, alpha=4.0).sub_(hue).mul_(g_not_max))
    hue.sub_(hue_r).mul_(r_not_max).add_(hue_r)
    # chroma == 0 leaves hue == 0 (grey stays grey whatever its hue); clamping at the smallest normal
    # float only avoids 0 / 0 and moves the output by less than that chroma
    hue.div_(chroma.clamp(min=torch.finfo(images.dtype).tiny).mul_(6.0))
    hue.add_(factors.to(images.dtype).view(-1, 1, 1))
    offsets = constant((1 / 2, 1 / 6, -1 / 6), images.dtype, images.device).view(1, 3, 1, 1)
    # |frac| of a negative number is 1 - its fractional part: the |. - 1/2| fold below is symmetric in that
    ramp = (hue.unsqueeze(1) + offsets).frac_().abs_().sub_(0.5).abs_().mul_(-6.0).add_(2.0).clamp_(0.0, 1.0)
    return ramp.mul_(chroma.unsqueeze(1)).add_(minc.unsqueeze(1))


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


@dataclass
class ColorJitterParams:
    """Per-sample colour-jitter parameters: the four factors (B,) and each sample's op order (B, 4).

    ``order[i]`` is a permutation of 0..3 (brightness, contrast, saturation, hue), drawn per sample as
    torchvision's ``ColorJitter`` draws one per call.
    """

    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    order: Tensor

    def factors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The four factor tensors, indexed like the op ids in ``order``."""
        return self.brightness, self.contrast, self.saturation, self.hue

    def take(self, rows: slice | Tensor) -> ColorJitterParams:
        """The parameters of some rows of the batch (a slice or an index tensor)."""
        return ColorJitterParams(*(t[rows] for t in (*self.factors(), self.order)))


def sample_color_jitter(batch: int, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                        hue: float = 0.1, generator: torch.Generator | None = None,
                        device: Device = None) -> ColorJitterParams:
    """Draw ``ColorJitter(brightness, contrast, saturation, hue)`` parameters for every sample.

    As torchvision: brightness, contrast and saturation factors uniform on ``[max(0, 1 - b), 1 + b]``, hue
    uniform on ``[-hue, hue]``, and a uniformly random op order per sample.
    """
    factors = [uniform((batch,), max(0.0, 1.0 - b), 1.0 + b, generator)
               for b in (brightness, contrast, saturation)]
    factors.append(uniform((batch,), -hue, hue, generator))
    order = uniform((batch, 4), 0.0, 1.0, generator).argsort(1)
    return ColorJitterParams(*(move(t, device) for t in (*factors, order)))


def color_jitter(images: Tensor, params: ColorJitterParams, apply: Tensor) -> Tensor:
    """torchvision ``ColorJitter`` on the samples where ``apply`` is set, each in its own op order.

    On the CPU, for every slot k and op j, op j runs once on the sub-batch of applied samples whose k-th op
    is j, so every sample sees each of its four ops exactly once. With masks on an accelerator the whole
    batch goes through :func:`_color_jitter_dense` instead. The other samples are returned unchanged.
    """
    if accelerated(apply):
        return _color_jitter_dense(images, params, apply)
    out = images.clone()
    apply = move(apply, params.order.device)
    for slot in range(4):
        for j, (op, factors) in enumerate(zip(_JITTER_OPS, params.factors(), strict=True)):
            update_subset(out, apply & (params.order[:, slot] == j), op, factors)
    return out


def _linear_jitter(images: Tensor, coef: Tensor) -> Tensor:
    """Per sample ``clamp(scale * x + gray_weight * gray(x) + mean_weight * mean(gray(x)), 0, 1)``, with
    ``coef = (scale, gray_weight, mean_weight)`` of shape ``(3, B, 1, 1, 1)``.

    Brightness, contrast and saturation are each this one expression (torchvision's ``blend`` of the image
    with black, with its mean grey or with its grey image): ``(f, 0, 0)``, ``(f, 0, 1 - f)`` and
    ``(f, 1 - f, 0)``; ``(1, 0, 0)`` leaves a [0, 1] image exactly as it is.
    """
    scale, gray_weight, mean_weight = coef
    luma = gray(images)
    mean = luma.mean((1, 2, 3), keepdim=True)
    return (images * scale).addcmul_(luma, gray_weight).addcmul_(mean, mean_weight).clamp_(0.0, 1.0)


def _color_jitter_dense(images: Tensor, params: ColorJitterParams, apply: Tensor) -> Tensor:
    """:func:`color_jitter` over the whole batch in a fixed sequence of ops, with no host synchronisation.

    Running each of the four ops in each of the four slots on every sample would cost 16 op evaluations,
    and launching kernels, not arithmetic, is what bounds a small-image step on a GPU. Brightness, contrast
    and saturation are one per-sample expression (:func:`_linear_jitter`), so only the hue shift needs its
    own code: every sample runs its linear ops before its hue slot (three passes: slots 0-2), the hue shift
    (one pass), then its linear ops after it (three passes: slots 1-3); a sample's other passes, and every
    pass of a sample left alone, use the identity coefficients. Seven passes instead of sixteen.
    """
    device, dtype = images.device, images.dtype
    order, apply = move(params.order, device), move(apply, device)
    b, c, s, h = (move(f, device).to(dtype) for f in params.factors())
    one, zero = torch.ones_like(b), torch.zeros_like(b)
    # coefficients (scale, gray weight, mean weight) x op (brightness, contrast, saturation, hue) x sample,
    # then reordered so that the op axis becomes each sample's slot
    coef = torch.stack([torch.stack([b, c, s, one]), torch.stack([zero, zero, 1.0 - s, zero]),
                        torch.stack([zero, 1.0 - c, zero, zero])])
    coef = coef.gather(1, order.t().expand(3, 4, -1))
    hue_slot = (order == 3).to(torch.uint8).argmax(1)
    slot = torch.arange(4, device=device).view(4, 1)
    identity = constant((1.0, 0.0, 0.0), dtype, device).view(3, 1, 1)
    before = torch.where((slot < hue_slot) & apply, coef, identity).view(3, 4, -1, 1, 1, 1)
    after = torch.where((slot > hue_slot) & apply, coef, identity).view(3, 4, -1, 1, 1, 1)
    out = images
    for k in range(3):
        out = _linear_jitter(out, before[:, k])
    out = select(apply, adjust_hue(out, h), out)
    for k in range(1, 4):
        out = _linear_jitter(out, after[:, k])
    return out
