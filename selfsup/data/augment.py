"""Batched image augmentation with per-sample random parameters, on whatever device the batch is on.

Every op comes in two parts: a deterministic ``op(images, params...)`` on a float ``(B, C, H, W)`` batch in
[0, 1] whose per-sample parameters are tensors of length ``B``, and a sampler that draws those parameters
from a :class:`torch.Generator` (on the generator's device, then moved), so that a seed fixes the output.
The ops follow the semantics of ``torchvision.transforms.v2.functional`` image by image, but treat the
whole batch in a few tensor ops with no Python loop over samples. :func:`augment` chains them into the
SimCLR recipe (Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_Device = torch.device | str | None


# ----------------------------------------------------------------------------------------------- helpers


def _per_sample(values: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1), to broadcast a per-sample value over a (B, C, H, W) batch."""
    return values.view(-1, 1, 1, 1)


def _move(t: Tensor, device: _Device) -> Tensor:
    """``t`` on ``device`` (None: where it is); asynchronous only from the host, where that is safe."""
    return t if device is None else t.to(device, non_blocking=t.device.type == "cpu")


def _uniform(shape: Sequence[int], low: float, high: float, generator: torch.Generator | None,
             dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform draws on [low, high) on the generator's device (CPU for the default generator)."""
    device = generator.device if generator is not None else None
    return torch.rand(shape, generator=generator, device=device, dtype=dtype) * (high - low) + low


@functools.lru_cache(maxsize=64)
def _constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small constant tensor, made once per device (a fresh host-to-GPU copy every step would sync)."""
    return torch.tensor(values, dtype=dtype, device=device)


def _accelerated(t: Tensor) -> bool:
    """Whether ``t`` lives on an accelerator, where the ops are arranged for few kernel launches: masked ops
    run on the whole batch and keep the masked samples (finding the masked indices would synchronise with the
    host), and all views go through the ops together. On the CPU, masked ops run on the selected sub-batch
    (less work) and views go one at a time (batches that stay in the cache run faster)."""
    return t.device.type != "cpu"


def _update_subset(out: Tensor, mask: Tensor, fn: Callable[..., Tensor], *per_sample: Tensor) -> None:
    """In place, ``out[i] = fn(out[i], *(a[i] for a in per_sample))`` for the samples ``i`` where ``mask``.

    On the CPU ``fn`` runs once on the selected sub-batch; the mask and the per-sample values may live on
    another device than ``out``. With a mask on the GPU (:func:`_accelerated`), ``fn`` runs on the whole batch
    and the masked samples are kept: the same result with no host synchronisation.
    """
    if _accelerated(mask):
        out.copy_(_select(mask, fn(out, *(_move(a, out.device) for a in per_sample)), out))
        return
    idx = mask.nonzero().squeeze(1)
    if idx.numel() == 0:
        return
    args = [_move(a[idx], out.device) for a in per_sample]
    idx = _move(idx, out.device)
    out.index_copy_(0, idx, fn(out.index_select(0, idx), *args))


def _gray(images: Tensor) -> Tensor:
    """ITU-R 601-2 luma with torchvision's ``rgb_to_grayscale`` weights, (B, 3, H, W) -> (B, 1, H, W)."""
    r, g, b = images.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def _blend(images: Tensor, other: Tensor, factors: Tensor) -> Tensor:
    """torchvision's ``_blend``: ``clamp(f * images + (1 - f) * other, 0, 1)`` with a per-sample ``f``."""
    f = _per_sample(factors.to(images.dtype))
    return images.mul(f).add_(other * (1.0 - f)).clamp_(0.0, 1.0)


def _select(flags: Tensor, chosen: Tensor, other: Tensor) -> Tensor:
    """Per sample, ``chosen`` where the flag is set, else ``other``.

    An exact ``torch.lerp`` with weights 0 and 1: several times faster than ``torch.where`` on CPU.
    """
    return torch.lerp(other, chosen, _per_sample(_move(flags, other.device).to(other.dtype)))


# ------------------------------------------------------------------------------------------ conversions


def to_float(images: Tensor) -> Tensor:
    """uint8 images -> float32 in [0, 1] (torchvision ``to_dtype(..., scale=True)``); float passes through."""
    if images.is_floating_point():
        return images
    return images.to(torch.float32).mul_(1.0 / 255.0)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel ``(x - mean) / std`` of a float batch, as torchvision ``normalize``."""
    mean_t = _constant(tuple(mean), images.dtype, images.device).view(-1, 1, 1)
    std_t = _constant(tuple(std), images.dtype, images.device).view(-1, 1, 1)
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


# -------------------------------------------------------------------------------------- random resized crop


def sample_resized_crop(batch: int, height: int, width: int, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None,
                        device: _Device = None) -> Tensor:
    """Per-sample crop boxes ``(B, 4)`` = (top, left, h, w) in whole pixels, as float.

    torchvision ``RandomResizedCrop.get_params`` vectorised: 10 attempts per sample, each with an area
    fraction uniform in ``scale`` and an aspect ratio log-uniform in ``ratio``; the first attempt whose
    rounded box fits the image wins and is placed uniformly; samples with no fitting attempt get
    torchvision's fallback, the largest central crop whose aspect ratio is clamped into ``ratio``.
    """
    attempts = 10
    area = _uniform((batch, attempts), scale[0], scale[1], generator, torch.float64) * (height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = _uniform((batch, attempts), log_lo, log_hi, generator, torch.float64).exp_()
    w = (area * aspect).sqrt_().round_()
    h = (area / aspect).sqrt_().round_()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    # top and left uniform on {0, ..., height - h} and {0, ..., width - w} (torch.randint in torchvision)
    u = torch.rand((batch, 2), generator=generator, device=area.device, dtype=torch.float64)
    room = torch.stack([height - h, width - w], 1) + 1
    top_left = (u * room).floor_().clamp_(max=room - 1)

    in_ratio = width / height
    if in_ratio < min(ratio):
        fb_w, fb_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fb_w, fb_h = round(height * max(ratio)), height
    else:
        fb_w, fb_h = width, height
    fallback = ((height - fb_h) // 2, (width - fb_w) // 2, fb_h, fb_w)
    fit = fits.any(1)
    boxes = torch.stack([torch.where(fit, col, float(fb)) for col, fb in
                         zip((top_left[:, 0], top_left[:, 1], h, w), fallback, strict=True)], 1)
    return _move(boxes.to(torch.float32), device)


def _source_coords(start: Tensor, length: Tensor, out_size: int, full_size: int) -> Tensor:
    """``grid_sample`` coordinates (B, out_size) of a bilinear resize of spans ``[start, start + length)``.

    Same source positions as ``F.interpolate(..., align_corners=False)`` on the cropped span:
    ``(dst + 0.5) * length / out_size - 0.5``, clamped into the span (so no pixel outside the crop is
    blended in), then offset by ``start`` and normalised to [-1, 1] over the full image.
    """
    dst = torch.arange(out_size, device=start.device, dtype=torch.float32).add_(0.5)
    src = (dst * (length / out_size)[:, None]).sub_(0.5).clamp_(min=0.0)
    src = torch.minimum(src, length[:, None] - 1).add_(start[:, None])
    return src.mul_(2.0 / full_size).add_(1.0 / full_size - 1.0)


def resized_crop(images: Tensor, boxes: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Crop every image to its box (top, left, h, w) and resize it bilinearly to ``size``.

    Matches ``torchvision.transforms.v2.functional.resized_crop(img, top, left, h, w, size,
    antialias=False)`` image by image, for boxes inside the image, up to float32 rounding of the normalised
    sampling grid: ~1e-6 below 100 px, ~1e-5 at 256 px, ~1e-4 at 500 px (worst case, white noise), far
    below the uint8 step of 4e-3. No antialiasing is applied, so downscaling aliases as torchvision's does
    with ``antialias=False`` (its default, ``antialias=True``, differs only there); RandomResizedCrop on
    small images such as CIFAR upscales, where antialiasing changes nothing. Runs as one ``F.grid_sample``
    over the whole batch, faster on CPU than a gather-based separable resize.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    batch, _, height, width = images.shape
    top, left, h, w = boxes.to(images.device, torch.float32).unbind(1)
    grid_y = _source_coords(top, h, out_h, height)[:, :, None].expand(batch, out_h, out_w)
    grid_x = _source_coords(left, w, out_w, width)[:, None, :].expand(batch, out_h, out_w)
    grid = torch.stack([grid_x, grid_y], 3).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


# --------------------------------------------------------------------------------------------- flips etc.


def sample_flags(batch: int, p: float, generator: torch.Generator | None = None,
                 device: _Device = None) -> Tensor:
    """Per-sample Bernoulli(p) flags (B,) bool, e.g. whether to flip or to apply a random op."""
    return _move(_uniform((batch,), 0.0, 1.0, generator) < p, device)


def hflip(images: Tensor, flags: Tensor) -> Tensor:
    """Mirror the samples whose flag is set left-right (torchvision ``horizontal_flip``)."""
    return _select(flags, images.flip(-1), images)


def grayscale(images: Tensor, flags: Tensor) -> Tensor:
    """Replace the flagged samples by their luma on all 3 channels (torchvision ``rgb_to_grayscale``)."""
    return _select(flags, _gray(images).expand_as(images), images)


def solarize(images: Tensor, flags: Tensor, threshold: float = 0.5) -> Tensor:
    """Invert the pixels ``>= threshold`` of the flagged samples (torchvision ``solarize``)."""
    invert = _per_sample(_move(flags, images.device)) & (images >= threshold)
    return torch.where(invert, 1.0 - images, images)


# ----------------------------------------------------------------------------------------------- colour


def adjust_brightness(images: Tensor, factors: Tensor) -> Tensor:
    """Multiply each sample by its factor and clamp to [0, 1] (torchvision ``adjust_brightness``)."""
    return images.mul(_per_sample(factors.to(images.dtype))).clamp_(0.0, 1.0)


def adjust_contrast(images: Tensor, factors: Tensor) -> Tensor:
    """Blend each sample with the mean of its grayscale image (torchvision ``adjust_contrast``)."""
    return _blend(images, _gray(images).mean((1, 2, 3), keepdim=True), factors)


def adjust_saturation(images: Tensor, factors: Tensor) -> Tensor:
    """Blend each sample with its grayscale image (torchvision ``adjust_saturation``)."""
    return _blend(images, _gray(images), factors)


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
    offsets = _constant((1 / 2, 1 / 6, -1 / 6), images.dtype, images.device).view(1, 3, 1, 1)
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
                        device: _Device = None) -> ColorJitterParams:
    """Draw ``ColorJitter(brightness, contrast, saturation, hue)`` parameters for every sample.

    As torchvision: brightness, contrast and saturation factors uniform on ``[max(0, 1 - b), 1 + b]``, hue
    uniform on ``[-hue, hue]``, and a uniformly random op order per sample.
    """
    factors = [_uniform((batch,), max(0.0, 1.0 - b), 1.0 + b, generator)
               for b in (brightness, contrast, saturation)]
    factors.append(_uniform((batch,), -hue, hue, generator))
    order = _uniform((batch, 4), 0.0, 1.0, generator).argsort(1)
    return ColorJitterParams(*(_move(t, device) for t in (*factors, order)))


def color_jitter(images: Tensor, params: ColorJitterParams, apply: Tensor) -> Tensor:
    """torchvision ``ColorJitter`` on the samples where ``apply`` is set, each in its own op order.

    On the CPU, for every slot k and op j, op j runs once on the sub-batch of applied samples whose k-th op
    is j, so every sample sees each of its four ops exactly once. With masks on an accelerator the whole
    batch goes through :func:`_color_jitter_dense` instead. The other samples are returned unchanged.
    """
    if _accelerated(apply):
        return _color_jitter_dense(images, params, apply)
    out = images.clone()
    apply = _move(apply, params.order.device)
    for slot in range(4):
        for j, (op, factors) in enumerate(zip(_JITTER_OPS, params.factors(), strict=True)):
            _update_subset(out, apply & (params.order[:, slot] == j), op, factors)
    return out


def _linear_jitter(images: Tensor, coef: Tensor) -> Tensor:
    """Per sample ``clamp(scale * x + gray_weight * gray(x) + mean_weight * mean(gray(x)), 0, 1)``, with
    ``coef = (scale, gray_weight, mean_weight)`` of shape ``(3, B, 1, 1, 1)``.

    Brightness, contrast and saturation are each this one expression (torchvision's ``_blend`` of the image
    with black, with its mean grey or with its grey image): ``(f, 0, 0)``, ``(f, 0, 1 - f)`` and
    ``(f, 1 - f, 0)``; ``(1, 0, 0)`` leaves a [0, 1] image exactly as it is.
    """
    scale, gray_weight, mean_weight = coef
    gray = _gray(images)
    mean = gray.mean((1, 2, 3), keepdim=True)
    return (images * scale).addcmul_(gray, gray_weight).addcmul_(mean, mean_weight).clamp_(0.0, 1.0)


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
    order, apply = _move(params.order, device), _move(apply, device)
    b, c, s, h = (_move(f, device).to(dtype) for f in params.factors())
    one, zero = torch.ones_like(b), torch.zeros_like(b)
    # coefficients (scale, gray weight, mean weight) x op (brightness, contrast, saturation, hue) x sample,
    # then reordered so that the op axis becomes each sample's slot
    coef = torch.stack([torch.stack([b, c, s, one]), torch.stack([zero, zero, 1.0 - s, zero]),
                        torch.stack([zero, 1.0 - c, zero, zero])])
    coef = coef.gather(1, order.t().expand(3, 4, -1))
    hue_slot = (order == 3).to(torch.uint8).argmax(1)
    slot = torch.arange(4, device=device).view(4, 1)
    identity = _constant((1.0, 0.0, 0.0), dtype, device).view(3, 1, 1)
    before = torch.where((slot < hue_slot) & apply, coef, identity).view(3, 4, -1, 1, 1, 1)
    after = torch.where((slot > hue_slot) & apply, coef, identity).view(3, 4, -1, 1, 1, 1)
    out = images
    for k in range(3):
        out = _linear_jitter(out, before[:, k])
    out = _select(apply, adjust_hue(out, h), out)
    for k in range(1, 4):
        out = _linear_jitter(out, after[:, k])
    return out


# ------------------------------------------------------------------------------------------------- blur


def sample_gaussian_blur(batch: int, sigma: tuple[float, float] = (0.1, 2.0),
                         generator: torch.Generator | None = None, device: _Device = None) -> Tensor:
    """Per-sample blur sigmas (B,), uniform on ``sigma`` as torchvision ``GaussianBlur`` draws them."""
    return _move(_uniform((batch,), sigma[0], sigma[1], generator), device)


def gaussian_blur(images: Tensor, sigmas: Tensor, kernel_size: int, flags: Tensor) -> Tensor:
    """Gaussian-blur the flagged samples, each with its own sigma (torchvision ``gaussian_blur``).

    Same kernel as ``gaussian_blur(img, [k, k], [s, s])``, applied separably after reflect padding, as
    two depthwise convolutions over the flagged sub-batch (one group per sample and channel).
    """
    out = images.clone()
    _update_subset(out, flags, lambda x, s: _blur(x, s, kernel_size), sigmas.to(images.dtype))
    return out


def _blur(images: Tensor, sigmas: Tensor, k: int) -> Tensor:
    batch, channels, height, width = images.shape
    taps = torch.arange(k, dtype=images.dtype, device=images.device) - (k - 1) / 2
    kernel = torch.softmax(-(taps**2) / (2 * sigmas[:, None] ** 2), dim=1)  # (n, k), normalised
    kernel = kernel.repeat_interleave(channels, 0)
    x = F.pad(images.reshape(1, batch * channels, height, width), [k // 2] * 4, mode="reflect")
    x = F.conv2d(x, kernel.view(-1, 1, k, 1), groups=batch * channels)
    x = F.conv2d(x, kernel.view(-1, 1, 1, k), groups=batch * channels)
    return x.view(batch, channels, height, width)


# ----------------------------------------------------------------------------------------------- recipe


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
    see :func:`_accelerated`). Parameters are drawn from
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
    x = resized_crop(to_float(images), _move(d.boxes, images.device), size)
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
    if not _accelerated(images):
        return torch.cat([_apply(images, draws.take(slice(v * batch, (v + 1) * batch)), cfg, size)
                          for v in range(views)])
    return _apply(images.repeat(views, 1, 1, 1) if views > 1 else images, draws, cfg, size)
