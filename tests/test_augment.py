"""selfsup.data.augment against torchvision's functional ops image by image, and its samplers' distributions."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from torch.testing import assert_close

from selfsup.data import augment as A
from selfsup.data.ops import base as B
from selfsup.data.ops import blur as G
from selfsup.data.ops import color as C
from selfsup.data.ops import crop as R

SEEDS = (0, 1, 2)
SHAPES = ((24, 24), (20, 36), (40, 28))  # square, wide and tall inputs


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(seed: int, batch: int = 6, height: int = 24, width: int = 24) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=_gen(seed))


def _with_ties(seed: int, batch: int = 6, height: int = 12, width: int = 12) -> torch.Tensor:
    """Coarsely quantised colours: many grey pixels and channels tied for max or min (hue edge cases)."""
    return torch.randint(0, 5, (batch, 3, height, width), generator=_gen(seed)).float() / 4


def _reference(tv_op, images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    return torch.stack([tv_op(img, f.item()) for img, f in zip(images, factors, strict=True)])


# ------------------------------------------------------------------------------------------ conversions


def test_to_float_matches_torchvision_and_passes_float_through():
    u8 = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=_gen(0))
    x = B.to_float(u8)
    assert x.dtype == torch.float32
    assert_close(x, TF.to_dtype(u8, torch.float32, scale=True), atol=0, rtol=0)
    assert B.to_float(x) is x


def test_normalize_matches_torchvision():
    x = _images(0)
    assert_close(B.normalize(x, B.IMAGENET_MEAN, B.IMAGENET_STD),
                 TF.normalize(x, list(B.IMAGENET_MEAN), list(B.IMAGENET_STD)))


@pytest.mark.parametrize("size", [12, 24, 40])
@pytest.mark.parametrize("shape", SHAPES)
def test_resize_matches_torchvision(shape, size):
    u8 = torch.randint(0, 256, (3, 3, *shape), dtype=torch.uint8, generator=_gen(size))
    x = B.to_float(u8)
    expected = TF.resize(x, [size, size], antialias=True)
    assert_close(B.resize(u8, size), expected, atol=1e-5, rtol=0)
    if shape == (size, size):
        assert B.resize(x, size) is x


# -------------------------------------------------------------------------------------- random resized crop


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [32, 48, (17, 29), 8])  # upscaling, non-square output, downscaling
def test_resized_crop_matches_torchvision(seed, shape, size):
    x = _images(seed, 8, *shape)
    boxes = R.sample_resized_crop(8, *shape, generator=_gen(seed))
    boxes[0] = torch.tensor([0.0, 0.0, *shape])  # the whole image
    out = R.resized_crop(x, boxes, size)
    size_list = [size, size] if isinstance(size, int) else list(size)
    expected = torch.stack([TF.resized_crop(img, *[int(v) for v in box], size_list, antialias=False)
                            for img, box in zip(x, boxes, strict=True)])
    assert out.shape == expected.shape
    assert_close(out, expected, atol=1e-5, rtol=0)


def test_resized_crop_at_equal_size_is_the_crop():
    x = _images(3, 4, 30, 30)
    boxes = torch.tensor([[0, 0, 16, 16], [5, 7, 16, 16], [14, 14, 16, 16], [3, 10, 16, 16]], dtype=torch.float32)
    expected = torch.stack([img[:, t:t + 16, l:l + 16] for img, (t, l, _, _) in zip(x, boxes.long(), strict=True)])
    assert_close(R.resized_crop(x, boxes, 16), expected, atol=1e-5, rtol=0)


def _check_boxes_inside(boxes: torch.Tensor, height: int, width: int) -> None:
    top, left, h, w = boxes.unbind(1)
    assert torch.equal(boxes, boxes.round())
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= height).all() and (left + w <= width).all()


@pytest.mark.parametrize("shape", [(32, 32), (300, 200)])
def test_sample_resized_crop_respects_scale_and_ratio(shape):
    height, width = shape
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = R.sample_resized_crop(20_000, height, width, scale, ratio, generator=_gen(0))
    _check_boxes_inside(boxes, height, width)
    _, _, h, w = boxes.double().unbind(1)
    area = height * width
    # w = round(sqrt(a * r)), h = round(sqrt(a / r)) for a target area a in scale * area and r in ratio
    assert ((w + 0.5) * (h + 0.5) >= scale[0] * area).all()
    assert ((w - 0.5) * (h - 0.5) <= scale[1] * area).all()
    assert ((w + 0.5) / (h - 0.5) >= ratio[0]).all() and ((w - 0.5) / (h + 0.5) <= ratio[1]).all()


def test_sample_resized_crop_distribution_matches_torchvision():
    height, width, n_ref = 32, 32, 3000
    torch.manual_seed(0)
    rrc = T.RandomResizedCrop(32)
    image = torch.zeros(3, height, width)
    ref = torch.tensor([[p["top"], p["left"], p["height"], p["width"]]
                        for p in (rrc.make_params([image]) for _ in range(n_ref))], dtype=torch.float64)
    ours = R.sample_resized_crop(20_000, height, width, generator=_gen(1)).double()
    # each column's mean agrees within 4 standard errors of the difference
    stderr = (ref.var(0) / n_ref + ours.var(0) / len(ours)).sqrt()
    assert ((ours.mean(0) - ref.mean(0)).abs() < 4 * stderr).all()


def test_sample_resized_crop_position_is_uniform():
    boxes = R.sample_resized_crop(20_000, 32, 32, scale=(0.25, 0.25), ratio=(1.0, 1.0), generator=_gen(2))
    assert (boxes[:, 2:] == 16).all()
    for column in boxes[:, :2].long().unbind(1):  # top, left uniform on {0, ..., 16}
        freq = torch.bincount(column, minlength=17).double() / len(column)
        assert len(freq) == 17
        assert (freq - 1 / 17).abs().max() < 0.012


@pytest.mark.parametrize("shape", [(32, 32), (20, 60), (60, 20), (33, 45)])
def test_sample_resized_crop_fallback_is_torchvision_central_crop(shape):
    height, width = shape
    scale, ratio = (2.0, 3.0), (3 / 4, 4 / 3)  # no attempt can fit
    params = T.RandomResizedCrop(8, scale=scale, ratio=ratio).make_params([torch.zeros(3, height, width)])
    expected = torch.tensor([params["top"], params["left"], params["height"], params["width"]], dtype=torch.float32)
    boxes = R.sample_resized_crop(5, height, width, scale, ratio, generator=_gen(0))
    assert_close(boxes, expected.expand(5, 4), atol=0, rtol=0)


# ------------------------------------------------------------------------------------- flips, gray, solarize


@pytest.mark.parametrize("seed", SEEDS)
def test_hflip_matches_torchvision(seed):
    x = _images(seed, 8, 20, 36)
    flags = C.sample_flags(8, 0.5, _gen(seed))
    expected = torch.stack([TF.horizontal_flip(img) if f else img for img, f in zip(x, flags, strict=True)])
    assert_close(C.hflip(x, flags), expected, atol=0, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_grayscale_matches_torchvision(seed):
    x = _images(seed, 8, 20, 36)
    flags = C.sample_flags(8, 0.5, _gen(seed))
    expected = torch.stack([TF.rgb_to_grayscale(img, num_output_channels=3) if f else img
                            for img, f in zip(x, flags, strict=True)])
    out = C.grayscale(x, flags)
    assert_close(out, expected, atol=1e-6, rtol=0)
    assert torch.equal(out[~flags], x[~flags])


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_solarize_matches_torchvision(threshold):
    x = _images(4, 8)
    flags = C.sample_flags(8, 0.5, _gen(4))
    expected = torch.stack([TF.solarize(img, threshold) if f else img for img, f in zip(x, flags, strict=True)])
    assert_close(C.solarize(x, flags, threshold), expected, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------- colour

COLOUR_OPS = [
    (C.adjust_brightness, TF.adjust_brightness, (0.0, 2.0)),
    (C.adjust_contrast, TF.adjust_contrast, (0.0, 2.0)),
    (C.adjust_saturation, TF.adjust_saturation, (0.0, 2.0)),
    (C.adjust_hue, TF.adjust_hue, (-0.5, 0.5)),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("op", "tv_op", "bounds"), COLOUR_OPS, ids=lambda v: getattr(v, "__name__", ""))
def test_colour_op_matches_torchvision(op, tv_op, bounds, seed):
    for x in (_images(seed, 8, 20, 36), _with_ties(seed, 8)):
        factors = torch.rand(8, generator=_gen(seed + 10)) * (bounds[1] - bounds[0]) + bounds[0]
        factors[:2] = torch.tensor(bounds)  # the extremes
        assert_close(op(x, factors), _reference(tv_op, x, factors), atol=1e-5, rtol=0)


def test_hue_of_pure_and_grey_colours():
    colours = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1],
                            [0.5, 0.5, 0.5], [0, 0, 0], [1, 1, 1]], dtype=torch.float32)
    x = colours.T.reshape(1, 3, 1, 9).expand(7, 3, 1, 9).contiguous()
    factors = torch.tensor([-0.5, -1 / 3, -1 / 6, 0.0, 1 / 6, 1 / 3, 0.5])
    out = C.adjust_hue(x, factors)
    assert_close(out, _reference(TF.adjust_hue, x, factors), atol=1e-5, rtol=0)
    assert_close(out[3], x[3], atol=1e-6, rtol=0)  # zero shift is the identity
    assert_close(out[:, :, :, 6:], x[:, :, :, 6:], atol=0, rtol=0)  # greys have no hue


@pytest.fixture(params=[False, True], ids=["subset", "dense"])
def masked_path(request, monkeypatch):
    """Run the ops both ways: the CPU's (masked ops on the selected sub-batch, views one at a time) and the
    GPU's (masked ops on the whole batch keeping the selected samples, to avoid a host sync; all views in one
    pass); both must match torchvision."""
    for module in (A, B, C):  # every module that decides by it
        monkeypatch.setattr(module, "accelerated", lambda t: request.param)
    return request.param


@pytest.mark.parametrize("seed", SEEDS)
def test_color_jitter_applies_each_sample_its_own_order(seed, masked_path):
    x = torch.cat([_images(seed, 12, 16, 20), _with_ties(seed, 12, 16, 20)])
    params = C.sample_color_jitter(24, 0.6, 0.6, 0.6, 0.3, generator=_gen(seed))
    apply = C.sample_flags(24, 0.8, _gen(seed + 1))
    tv_ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    expected = []
    for i, img in enumerate(x):
        if apply[i]:
            for j in params.order[i].tolist():
                img = tv_ops[j](img, params.factors()[j][i].item())
        expected.append(img)
    out = C.color_jitter(x, params, apply)
    assert_close(out, torch.stack(expected), atol=2e-5, rtol=0)
    assert torch.equal(out[~apply], x[~apply])
    assert not torch.equal(out[apply], x[apply])


def test_sample_color_jitter_distribution():
    n = 20_000
    params = C.sample_color_jitter(n, brightness=0.4, contrast=0.8, saturation=1.5, hue=0.1, generator=_gen(0))
    for factors, (low, high) in [(params.brightness, (0.6, 1.4)), (params.contrast, (0.2, 1.8)),
                                 (params.saturation, (0.0, 2.5)), (params.hue, (-0.1, 0.1))]:
        assert factors.shape == (n,)
        assert factors.min() >= low and factors.max() <= high
        width = high - low
        assert factors.min() < low + 0.002 * width and factors.max() > high - 0.002 * width
        assert abs(factors.mean().item() - (low + high) / 2) < 0.01 * width
        assert abs(factors.var().item() - width**2 / 12) < 0.03 * width**2 / 12
    assert torch.equal(params.order.sort(1).values, torch.arange(4).expand(n, 4))
    for slot in range(4):  # every op equally likely in every slot
        freq = torch.bincount(params.order[:, slot], minlength=4).double() / n
        assert (freq - 0.25).abs().max() < 0.015


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_sample_flags_probability(p):
    flags = C.sample_flags(20_000, p, _gen(0))
    assert flags.dtype == torch.bool
    assert abs(flags.double().mean().item() - p) < 0.015


# ------------------------------------------------------------------------------------------------- blur


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kernel_size", [3, 5, 9])
def test_gaussian_blur_matches_torchvision(seed, kernel_size, masked_path):
    x = _images(seed, 8, 20, 36)
    sigmas = torch.rand(8, generator=_gen(seed)) * 1.9 + 0.1
    flags = C.sample_flags(8, 0.5, _gen(seed + 1))
    flags[:2] = torch.tensor([True, False])
    expected = torch.stack([TF.gaussian_blur(img, [kernel_size, kernel_size], [s.item(), s.item()]) if f else img
                            for img, s, f in zip(x, sigmas, flags, strict=True)])
    out = G.gaussian_blur(x, sigmas, kernel_size, flags)
    assert_close(out, expected, atol=1e-5, rtol=0)
    assert torch.equal(out[~flags], x[~flags])


def test_sample_gaussian_blur_distribution():
    sigmas = G.sample_gaussian_blur(20_000, (0.1, 2.0), generator=_gen(0))
    assert sigmas.min() >= 0.1 and sigmas.max() <= 2.0
    assert sigmas.min() < 0.11 and sigmas.max() > 1.99
    assert abs(sigmas.mean().item() - 1.05) < 0.02


@pytest.mark.parametrize(("size", "kernel"), [(32, 3), (64, 7), (96, 9), (224, 23)])
def test_blur_kernel_size(size, kernel):
    assert A.AugmentConfig().blur_kernel_size(size) == kernel


# ----------------------------------------------------------------------------------------------- augment


def _uint8_batch(seed: int, batch: int = 16, height: int = 32, width: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=_gen(seed))


@pytest.mark.parametrize("cfg", [A.AugmentConfig(),
                                 A.AugmentConfig(blur_p=0.5, solarize_p=0.5, crop_scale=(0.2, 1.0))])
@pytest.mark.parametrize(("shape", "size"), [((32, 32), 32), ((40, 56), 24), ((28, 20), 64)])
def test_augment_output(cfg, shape, size):
    images = _uint8_batch(0, 16, *shape)
    out = A.augment(images, cfg, size, _gen(0))
    assert out.shape == (16, 3, size, size)
    assert out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.isfinite(out).all()


def test_augment_is_deterministic_given_the_seed():
    images = _uint8_batch(1)
    cfg = A.AugmentConfig(blur_p=0.5, solarize_p=0.2)
    first = A.augment(images, cfg, 32, _gen(7))
    assert torch.equal(first, A.augment(images, cfg, 32, _gen(7)))
    assert not torch.equal(first, A.augment(images, cfg, 32, _gen(8)))
    gen = _gen(7)
    assert not torch.equal(A.augment(images, cfg, 32, gen), A.augment(images, cfg, 32, gen))  # stream advances


def test_augment_applies_ops_with_their_probabilities():
    """With an identity crop, each output is the input, its mirror image, or its grey version."""
    images = _uint8_batch(2, 4000, 4, 4)
    x = B.to_float(images)
    identity_crop = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0)}
    flipped = A.augment(images, A.AugmentConfig(**identity_crop, jitter_p=0.0, gray_p=0.0), 4, _gen(0))
    is_flip = (flipped - x.flip(-1)).flatten(1).abs().amax(1) < 1e-6
    is_same = (flipped - x).flatten(1).abs().amax(1) < 1e-6
    assert (is_flip ^ is_same).all()
    assert abs(is_flip.double().mean().item() - 0.5) < 0.03
    gray = A.augment(images, A.AugmentConfig(**identity_crop, flip_p=0.0, jitter_p=0.0, gray_p=0.2), 4, _gen(1))
    is_gray = (gray - gray[:, :1]).flatten(1).abs().amax(1) == 0
    assert abs(is_gray.double().mean().item() - 0.2) < 0.03
    jittered = A.augment(images, A.AugmentConfig(**identity_crop, flip_p=0.0, gray_p=0.0), 4, _gen(2))
    changed = (jittered - x).flatten(1).abs().amax(1) > 1e-4
    assert abs(changed.double().mean().item() - 0.8) < 0.03


@pytest.mark.parametrize("views", [1, 2, 3])
def test_augment_shards_views_as_one_process(views, masked_path):
    """Views made in one call, on 2 ranks, are row for row those of one process with the global batch."""
    images = _uint8_batch(4, 12)
    cfg = A.AugmentConfig(blur_p=0.5, solarize_p=0.3)
    whole = A.augment(images, cfg, 16, _gen(9), views=views)
    assert whole.shape == (views * 12, 3, 16, 16)
    per_view = whole.view(views, 12, 3, 16, 16)
    for v in range(1, views):  # independent draws: no view repeats another
        assert (per_view[v] - per_view[0]).flatten(1).abs().amax(1).min() > 0
    for rank in range(2):
        part = A.augment(images[6 * rank:6 * (rank + 1)], cfg, 16, _gen(9), shard=(rank, 2), views=views)
        assert torch.equal(part.view(views, 6, 3, 16, 16), per_view[:, 6 * rank:6 * (rank + 1)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_on_cuda_with_cpu_or_cuda_generator():
    images = _uint8_batch(3)
    cfg = A.AugmentConfig(blur_p=0.5, solarize_p=0.2)
    on_cpu = A.augment(images, cfg, 32, _gen(5))
    with_cpu_gen = A.augment(images.cuda(), cfg, 32, _gen(5))
    assert with_cpu_gen.is_cuda
    assert_close(with_cpu_gen.cpu(), on_cpu, atol=1e-4, rtol=0)
    cuda_gen = torch.Generator(device="cuda").manual_seed(5)
    out = A.augment(images.cuda(), cfg, 32, cuda_gen)
    assert out.is_cuda and out.shape == (16, 3, 32, 32)
    assert torch.equal(out, A.augment(images.cuda(), cfg, 32, torch.Generator(device="cuda").manual_seed(5)))

