"""Exemplar-CNN: the affine patch op and the colour ops against per-image references and their parameter
distributions, the gradient-weighted patch choice, the seeds and their classes, a step against a per-image
reference, views, and 2 processes vs 1."""

import colorsys
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from selfsup.config import TrainConfig
from selfsup.data import load_data
from selfsup.data.ops.affine import affine_patches, energy_boxes, gradient_energy, sample_patch_affine
from selfsup.data.ops.hsv import (
    adjust_hsv,
    hsv_to_rgb,
    pca_contrast,
    pixel_moments,
    principal_components,
    rgb_to_hsv,
    sample_exemplar_color,
)
from selfsup.data.views import prepare
from selfsup.engine.epoch import Epoch
from selfsup.errors import UserError
from selfsup.methods import Batch
from selfsup.methods.exemplar import Exemplar
from tests.helpers import Recorder, assert_two_ranks_train_like_one


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_affine_patches_match_torchvision_affine_cropped_to_the_box():
    images = torch.rand(6, 3, 20, 23, generator=_gen(0))
    boxes = torch.tensor([[5.0, 7.0, 9.0, 9.0], [0.0, 0.0, 9.0, 9.0], [11.0, 14.0, 9.0, 9.0]] * 2)
    params = sample_patch_affine(6, 0.3, (0.6, 1.6), 40.0, _gen(1))
    out = affine_patches(images, boxes, params, 9, padding="zeros")
    for i in range(6):
        top, left, side = (int(v) for v in boxes[i, :3])
        angle, tx, ty, scale = params[i].tolist()
        ref = TF.affine(images[i], angle=angle, translate=[tx * side, ty * side], scale=scale, shear=[0.0, 0.0],
                        interpolation=InterpolationMode.BILINEAR, center=[left + side / 2, top + side / 2])
        torch.testing.assert_close(out[i], TF.crop(ref, top, left, side, side), atol=1e-5, rtol=0)


def test_untransformed_patches_are_resized_crops():
    images = torch.rand(3, 3, 24, 24, generator=_gen(2))
    boxes = torch.tensor([[0.0, 2.0, 16.0, 16.0], [8.0, 8.0, 16.0, 16.0], [3.0, 5.0, 8.0, 8.0]])
    out = affine_patches(images, boxes, torch.tensor([[0.0, 0.0, 0.0, 1.0]]).expand(3, 4), 8)
    for i in range(3):
        top, left, h, w = (int(v) for v in boxes[i])
        ref = TF.resized_crop(images[i], top, left, h, w, [8, 8], antialias=False)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


def test_affine_parameters_are_drawn_over_the_papers_ranges():
    p = sample_patch_affine(20000, 0.2, (0.7, 1.4), 20.0, _gen(3))
    angle, tx, ty, scale = p.unbind(1)
    assert angle.abs().max() <= 20 and angle.abs().max() > 19.9 and abs(float(angle.mean())) < 0.3
    assert abs(float(angle.std()) - 40 / math.sqrt(12)) < 0.3  # uniform on [-20, 20]
    for t in (tx, ty):
        assert t.abs().max() <= 0.2 and abs(float(t.mean())) < 0.005 and abs(float(t.std()) - 0.4 / 12**0.5) < 0.005
    log = scale.log()
    assert scale.min() >= 0.7 and scale.max() <= 1.4
    assert abs(float(log.mean()) - (math.log(0.7) + math.log(1.4)) / 2) < 0.005  # log-uniform
    assert abs(float(tx @ ty) / 20000) < 1e-3  # independent shifts


def test_hsv_conversions_match_colorsys_pixel_by_pixel():
    images = torch.rand(2, 3, 5, 6, generator=_gen(4), dtype=torch.float64)
    images[0, :, 0, 0] = 0.0  # black, and grey (no chroma)
    images[0, :, 0, 1] = 0.5
    images[1, 1, 2, 2] = images[1, 0, 2, 2]  # red and green tie for the max
    hsv = rgb_to_hsv(images)
    for b in range(2):
        for y in range(5):
            for x in range(6):
                expected = colorsys.rgb_to_hsv(*images[b, :, y, x].tolist())
                torch.testing.assert_close(hsv[b, :, y, x], torch.tensor(expected, dtype=torch.float64))
                back = colorsys.hsv_to_rgb(*hsv[b, :, y, x].tolist())
                torch.testing.assert_close(hsv_to_rgb(hsv)[b, :, y, x], torch.tensor(back, dtype=torch.float64))
    torch.testing.assert_close(hsv_to_rgb(hsv), images)


def test_adjust_hsv_raises_scales_and_shifts_saturation_and_value_and_turns_the_hue():
    images = torch.rand(3, 3, 4, 4, generator=_gen(5), dtype=torch.float64)
    p = sample_exemplar_color(3, generator=_gen(6))
    power, factor, offset, hue = (t.double() for t in (p.power, p.factor, p.offset, p.hue))
    out = adjust_hsv(images, power, factor, offset, hue)
    for b in range(3):
        for y in range(4):
            for x in range(4):
                h, s, v = colorsys.rgb_to_hsv(*images[b, :, y, x].tolist())
                s, v = (min(1.0, max(0.0, c ** float(power[b, k]) * float(factor[b, k]) + float(offset[b, k])))
                        for k, c in enumerate((s, v)))
                expected = colorsys.hsv_to_rgb((h + float(hue[b])) % 1.0, s, v)
                torch.testing.assert_close(out[b, :, y, x], torch.tensor(expected, dtype=torch.float64))


def test_pca_contrast_scales_each_pixels_principal_coordinates():
    images = torch.rand(2, 3, 3, 4, generator=_gen(7), dtype=torch.float64)
    mean, components = principal_components(pixel_moments(torch.rand(10, 3, 6, 6, generator=_gen(8))))
    mean, components = mean.double(), components.double()
    factors = sample_exemplar_color(2, generator=_gen(9)).pca.double()
    out = pca_contrast(images, mean, components, factors)
    for b in range(2):
        for y in range(3):
            for x in range(4):
                d = images[b, :, y, x] - mean
                expected = mean + sum(factors[b, k] * (d @ components[k]) * components[k] for k in range(3))
                torch.testing.assert_close(out[b, :, y, x], expected.clamp(0, 1))


def test_principal_components_are_those_of_all_pixels():
    images = torch.randint(0, 256, (12, 3, 5, 5), dtype=torch.uint8, generator=_gen(10))
    images[:, 1] = images[:, 0] // 2 + 60  # correlated channels
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3).double() / 255
    mean, components = principal_components(pixel_moments(images))
    torch.testing.assert_close(mean.double(), pixels.mean(0), atol=1e-6, rtol=0)
    values, vectors = torch.linalg.eigh(torch.cov(pixels.T, correction=0))
    for k in range(3):  # largest variance first; each component up to its sign
        assert abs(float(components[k].double() @ vectors[:, 2 - k])) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(components @ components.T, torch.eye(3), atol=1e-5, rtol=0)


def test_colour_parameters_are_drawn_over_the_papers_ranges():
    p = sample_exemplar_color(20000, generator=_gen(11))
    for t, low, high in ((p.pca, 0.5, 2.0), (p.power, 0.25, 4.0), (p.factor, 0.7, 1.4)):
        assert t.min() >= low and t.max() <= high
        torch.testing.assert_close(t.log().mean(0), torch.full((t.shape[1],), (math.log(low) + math.log(high)) / 2),
                                   atol=0.02, rtol=0)
    for t in (p.offset, p.hue):
        assert t.abs().max() <= 0.1 and abs(float(t.mean())) < 0.003
    assert p[slice(2, 5)].pca.shape == (3, 3)


def test_gradient_energy_is_the_squared_luma_gradient():
    images = torch.rand(2, 3, 6, 7, generator=_gen(12))
    luma = (0.2989 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).double()
    e = gradient_energy(images).double()

    def diff(line, i):  # central difference, one-sided at the ends
        lo, hi = max(i - 1, 0), min(i + 1, len(line) - 1)
        return (line[hi] - line[lo]) / (hi - lo)

    for b in range(2):
        for y in range(6):
            for x in range(7):
                gy, gx = diff(luma[b, :, x], y), diff(luma[b, y, :], x)
                assert float(e[b, y, x]) == pytest.approx(float(gy**2 + gx**2), abs=1e-5)


def test_patch_positions_are_drawn_in_proportion_to_the_gradient_energy_inside():
    image = torch.rand(1, 3, 7, 9, generator=_gen(13))
    side = 4
    e = gradient_energy(image)[0].double()
    probs = torch.tensor([[float(e[t:t + side, s:s + side].sum()) for s in range(9 - side + 1)]
                          for t in range(7 - side + 1)]).flatten()
    probs = probs / probs.sum()
    cdf = probs.cumsum(0)
    u = cdf - probs / 2  # the middle of every position's share of [0, 1)
    boxes = energy_boxes(image.expand(len(u), -1, -1, -1), torch.full((len(u),), side), u)
    width = 9 - side + 1
    expected = torch.stack([torch.arange(len(u)) // width, torch.arange(len(u)) % width], 1).float()
    assert torch.equal(boxes[:, :2], expected) and (boxes[:, 2:] == side).all()


def test_a_patch_lands_on_the_textured_corner_of_a_flat_image():
    image = torch.full((1, 3, 32, 32), 0.5)
    image[..., :10, 22:] = torch.rand(1, 3, 10, 10, generator=_gen(14))  # texture in the top-right corner only
    u = torch.rand(500, generator=_gen(15))
    boxes = energy_boxes(image.expand(500, -1, -1, -1), torch.full((500,), 8), u)
    top, left = boxes[:, 0], boxes[:, 1]
    assert (top <= 10).all() and (left >= 22 - 8).all()  # every box overlaps the texture
    assert float(top.mean()) < 4 and float(left.mean()) > 20
    flat = energy_boxes(torch.zeros(500, 3, 12, 12), torch.full((500,), 4), u)  # no gradient: uniform
    assert flat[:, :2].min() == 0 and flat[:, :2].max() == 8 and abs(float(flat[:, 0].mean()) - 4) < 0.5


DIGITS = load_data("digits")


def _method(**kw):
    torch.manual_seed(0)
    from selfsup.backbones import build_backbone

    return Exemplar(build_backbone("small"), 256, 8, num_samples=len(DIGITS.pretrain), **kw)


def test_the_seeds_are_the_only_images_drawn_and_each_is_its_own_class():
    method = _method(seeds=50, head_hidden_dim=0)
    ctx = Epoch(0, DIGITS.pretrain.images, method, {}, torch.device("cpu"), seed=3)
    method.on_epoch_start(ctx)
    seeds = (method.seed_class >= 0).nonzero().squeeze(1)
    assert len(seeds) == 50 and sorted(method.seed_class[seeds].tolist()) == list(range(50))
    assert torch.equal(ctx.weights > 0, method.seed_class >= 0) and method.classifier.out_features == 50
    mean, components = principal_components(pixel_moments(DIGITS.pretrain.images))
    torch.testing.assert_close(method.pixel_mean, mean)
    again = _method(seeds=50, head_hidden_dim=0)
    again.on_epoch_start(Epoch(0, DIGITS.pretrain.images, again, {}, torch.device("cpu"), seed=3))
    assert torch.equal(again.seed_class, method.seed_class) and torch.equal(again.patch_draws, method.patch_draws)
    later = Epoch(1, DIGITS.pretrain.images, again, {}, torch.device("cpu"), seed=3)
    again.on_epoch_start(later)  # later epochs keep the seeds (restored from a checkpoint on resume)
    assert torch.equal(again.seed_class, method.seed_class) and torch.equal(later.weights, ctx.weights)


def test_bad_options_are_one_line_errors():
    with pytest.raises(UserError, match="seeds must be 'all' or between 2 and the 1347 images"):
        _method(seeds=5000)
    with pytest.raises(UserError, match="seeds must be 'all'"):
        _method(seeds="many")
    with pytest.raises(UserError, match="patch_min"):
        _method(patch_min=0.9, patch_max=0.5)
    assert _method().seeds == 1347  # the default 4,000, capped by a smaller set
    assert _method(seeds="all").seeds == 1347


def test_a_step_cuts_transforms_and_classifies_each_seed_patch_as_a_per_image_reference_does():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=_gen(16))
    method = Exemplar(Recorder(), 8, 8, num_samples=10, seeds=6, patch_min=0.5, patch_max=0.5, head_hidden_dim=0)
    method.seed_class.copy_(torch.tensor([-1, 3, 0, -1, 5, 1, 2, -1, 4, -1]))
    method.patch_draws.copy_(torch.rand(10, 2, generator=_gen(17)))
    method.pixel_mean.copy_(torch.tensor([0.4, 0.5, 0.6]))
    method.pixel_components.copy_(torch.linalg.qr(torch.randn(3, 3, generator=_gen(18)))[0].T)
    idx = torch.tensor([4, 1, 8, 1])
    loss = method.training_step(Batch(images, None, idx, _gen(19), 0.0))
    g = _gen(19)  # the reference draws the step's parameters in the same order: geometry, then colour
    affine, colour = sample_patch_affine(4, 0.2, (0.7, 1.4), 20.0, g), sample_exemplar_color(4, generator=g)
    mean, comp = method.pixel_mean.double(), method.pixel_components.double()
    expected = []
    for i in range(4):  # the patch side is half of 16 = the input size: torchvision's affine, cropped
        (top, left, side, _), = energy_boxes(images[i:i + 1], torch.tensor([8]), method.patch_draws[idx[i], 1:])
        top, left, side = int(top), int(left), int(side)
        angle, tx, ty, scale = affine[i].tolist()
        x = TF.affine(images[i].float() / 255, angle=angle, translate=[tx * side, ty * side], scale=scale,
                      shear=[0.0, 0.0], interpolation=InterpolationMode.BILINEAR,
                      center=[left + side / 2, top + side / 2])
        # reflection padding differs from torchvision's zeros where the transform leaves the image: keep those apart
        x = TF.crop(x, top, left, side, side).double()
        pixels = []
        for p in x.permute(1, 2, 0).reshape(-1, 3):
            q = mean + sum(colour.pca[i, k] * ((p - mean) @ comp[k]) * comp[k] for k in range(3))
            h, s, v = colorsys.rgb_to_hsv(*q.clamp(0, 1).tolist())
            s, v = (min(1.0, max(0.0, c ** float(colour.power[i, k]) * float(colour.factor[i, k])
                                 + float(colour.offset[i, k]))) for k, c in enumerate((s, v)))
            pixels.append(colorsys.hsv_to_rgb((h + float(colour.hue[i])) % 1.0, s, v))
        expected.append(torch.tensor(pixels).T.reshape(3, side, side).float())
    seen = method.backbone.seen
    inside = _inside_mask(images, idx, method, affine)
    torch.testing.assert_close(seen * inside, prepare(torch.stack(expected)) * inside, atol=2e-4, rtol=0)
    assert inside.float().mean() > 0.5
    logits = method.classifier(method.backbone.proj(seen.mean((2, 3))))
    torch.testing.assert_close(loss, F.cross_entropy(logits, method.seed_class[idx]))


def _inside_mask(images, idx, method, affine):
    """Output pixels whose bilinear sources all lie inside the image (where the padding cannot matter)."""
    boxes = method.patch_boxes(Batch(images, None, idx, _gen(0), 0.0))
    probe = affine_patches(torch.ones(images.shape, dtype=torch.float32), boxes, affine, 8, padding="zeros")
    return (probe > 1 - 1e-6).all(1, keepdim=True)


def test_views_show_each_seed_patch_and_its_transformations_with_the_seed_index():
    method = _method(seeds=40, head_hidden_dim=0)
    method.on_epoch_start(Epoch(0, DIGITS.pretrain.images, method, {}, torch.device("cpu"), seed=0))
    idx = (method.seed_class >= 0).nonzero().squeeze(1)[:5]
    batch = Batch(DIGITS.pretrain.images[idx], None, idx, _gen(1), 0.0)
    panels = method.views(batch)
    assert len(panels) == 4 and all(p.images.shape == (5, 3, 8, 8) for p in panels)
    assert all(p.captions == [f"seed {c}" for c in method.seed_class[idx].tolist()] for p in panels)
    method.backbone = Recorder()
    method.classifier = torch.nn.Linear(8, 40)
    method.training_step(Batch(DIGITS.pretrain.images[idx], None, idx, _gen(1), 0.0))
    torch.testing.assert_close(method.backbone.seen, prepare(panels[1].images))  # the first is the step's input


def test_two_processes_train_exemplar_like_one(tmp_path):
    cfg = TrainConfig(method="exemplar", data="digits", batch_size=32, image_size=8, steps=3, log_every=1,
                      method_args=dict(seeds=64, head_hidden_dim=32))
    state = assert_two_ranks_train_like_one(tmp_path, cfg)
    assert int((state["seed_class"] >= 0).sum()) == 64


def test_resume_mid_epoch_and_at_an_epoch_boundary_equals_a_straight_run(tmp_path):
    import selfsup
    from tests.helpers import assert_same_state

    cfg = TrainConfig(method="exemplar", data="digits", batch_size=64, image_size=8, steps=25, log_every=5,
                      method_args=dict(seeds=64, head_hidden_dim=32))  # 21 steps per epoch
    straight = selfsup.train(cfg, tmp_path / "a", evaluate=False, show_progress=False, data=DIGITS)
    selfsup.train(cfg, tmp_path / "b", evaluate=False, show_progress=False, data=DIGITS, stop_at=10)
    selfsup.train(cfg, resume=tmp_path / "b", evaluate=False, show_progress=False, data=DIGITS, stop_at=21)
    resumed = selfsup.train(cfg, resume=tmp_path / "b", evaluate=False, show_progress=False, data=DIGITS)
    assert_same_state(straight.method.state_dict(), resumed.method.state_dict())


def test_a_positive_angle_turns_the_patch_clockwise():
    x = torch.rand(1, 3, 6, 6, generator=_gen(20))
    out = affine_patches(x, torch.tensor([[0.0, 0.0, 6.0, 6.0]]), torch.tensor([[90.0, 0.0, 0.0, 1.0]]), 6)
    torch.testing.assert_close(out, torch.rot90(x, -1, dims=(2, 3)), atol=1e-5, rtol=0)
