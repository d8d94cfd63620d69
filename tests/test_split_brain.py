"""Split-brain autoencoder: the L / ab split and both quantisations against per-pixel loops, the loss against a float64
reference, the step against a per-image pipeline, the second trunk (with_in_channels), the concatenated encoder and
its stages, views / outputs, bad options, and 2 processes vs 1. (The Lab round trip itself: tests/test_lab.py.)"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones import build_backbone, stage_channels
from selfsup.backbones.channels import with_in_channels
from selfsup.config import TrainConfig
from selfsup.data.ops.ab import annealed_mean
from selfsup.data.ops.base import IMAGENET_MEAN, IMAGENET_STD, normalize, resize
from selfsup.data.ops.lab import lab_to_rgb, rgb_to_lab
from selfsup.data.ops.lightness import lightness_centres, quantise_lightness
from selfsup.data.views import augmented
from selfsup.engine.build import build_method
from selfsup.errors import UserError
from selfsup.evaluate.features import extract_features, pool_stage
from selfsup.losses.colour import colorization_loss
from selfsup.losses.cross_channel import split_brain_loss
from selfsup.methods import Batch
from selfsup.methods.split_brain import SplitBrain
from tests.helpers import assert_two_ranks_train_like_one, colour_shapes

SHAPES = colour_shapes(60, 16)


def method(**kwargs) -> SplitBrain:
    torch.manual_seed(0)
    return SplitBrain(build_backbone("small", 16, in_channels=1, width=0.25), 64, 16, decoder_dim=16, **kwargs)


def batch(images: torch.Tensor, seed: int = 2) -> Batch:
    return Batch(images, None, torch.arange(len(images)), torch.Generator().manual_seed(seed), 0.0)


# -- quantisation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [50, 100, 7])
def test_lightness_bins_are_q_equal_bins_of_0_to_100_as_a_per_pixel_loop_finds_them(q):
    edges = [100.0 * i / q for i in range(q + 1)]  # float64 edges
    ends = torch.tensor([0.0, 2.0, 50.0, 99.999, 100.0, 100.001, -0.001])  # edges, white, and rounding past the ends
    values = torch.cat([torch.rand(2, 1, 9, 9) * 100.0, ends.view(1, 1, 1, 7).expand(2, 1, 9, 7)], dim=-1)
    index = quantise_lightness(values, q)
    assert index.shape == (2, 9, 16) and index.dtype == torch.int64
    for b in range(2):
        for y in range(9):
            for x in range(16):
                v = float(values[b, 0, y, x])
                inside = [i for i in range(q) if edges[i] <= v < edges[i + 1]]
                expected = inside[0] if inside else 0 if v < 0 else q - 1
                assert int(index[b, y, x]) == expected, (v, int(index[b, y, x]), expected)
    centres = lightness_centres(q)
    assert centres.shape == (q, 1)
    torch.testing.assert_close(centres[:, 0].double(), torch.tensor([(a + b) / 2 for a, b in zip(edges, edges[1:])],
                                                                    dtype=torch.float64), rtol=0, atol=1e-5)
    assert torch.equal(quantise_lightness(centres.view(1, 1, q, 1), q)[0, :, 0], torch.arange(q))


def test_the_targets_are_the_nearest_ab_bin_and_the_l_bin_of_the_area_averaged_lab_at_a_quarter_size():
    m = method()
    rgb = resize(SHAPES.test.images[:3], 16)
    lab, small, ab_target, lightness_target = m._split(rgb)
    torch.testing.assert_close(lab, rgb_to_lab(rgb))
    for i in range(3):  # per image, per pixel: a 4x4 block mean of Lab, then the nearest centre by float64 distances
        reference = rgb_to_lab(rgb[i]).double().view(3, 4, 4, 4, 4).mean((2, 4))
        torch.testing.assert_close(small[i].double(), reference, atol=1e-4, rtol=0)
        for y in range(4):
            for x in range(4):
                d = (m.bins.double() - small[i, 1:, y, x].double()).square().sum(1)
                assert int(ab_target[i, y, x]) == int(d.argmin())
                assert int(lightness_target[i, y, x]) == min(49, math.floor(float(small[i, 0, y, x]) / 2.0))


# -- the loss ----------------------------------------------------------------------------------------------------


def _reference_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """eq. 2 with 1-hot targets, per pixel in float64, averaged over pixels."""
    b, q, h, w = logits.shape
    total = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                z = [float(v) for v in logits[i, :, y, x].detach().double()]
                top = max(z)
                log_norm = top + math.log(sum(math.exp(v - top) for v in z))
                total += log_norm - z[int(target[i, y, x])]
    return total / (b * h * w)


def test_the_loss_is_both_pixelwise_cross_entropies_against_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    ab_logits, ab_target = torch.randn(2, 30, 3, 4, generator=g) * 3, torch.randint(0, 30, (2, 3, 4), generator=g)
    l_logits, l_target = torch.randn(2, 50, 2, 2, generator=g) * 3, torch.randint(0, 50, (2, 2, 2), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = split_brain_loss(ab_logits, ab_target, l_logits, l_target)
    assert set(terms) == {"colour", "lightness"} and all(t.dtype == torch.float32 for t in terms.values())
    assert terms["colour"].item() == pytest.approx(_reference_cross_entropy(ab_logits, ab_target), rel=1e-5)
    assert terms["lightness"].item() == pytest.approx(_reference_cross_entropy(l_logits, l_target), rel=1e-5)
    # colourisation's loss with 1-hot targets and unit weights is the same number
    one_hot = F.one_hot(ab_target, 30).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(terms["colour"], colorization_loss(ab_logits, one_hot, torch.ones(30)))


def test_the_step_is_that_loss_of_both_trunks_on_each_images_l_and_ab():
    m = method()
    images = SHAPES.pretrain.images[:4]
    terms = m.training_step(batch(images))
    rgb = augmented(images, m.aug, 16, torch.Generator().manual_seed(2))
    lab = torch.stack([rgb_to_lab(x) for x in rgb])  # image by image; the trunks then see the whole batch (BN)
    small = F.interpolate(lab, size=4, mode="area")
    L_in, ab_in = (lab[:, :1] - 50.0) / 50.0, lab[:, 1:] / 110.0
    ab_logits = m.to_ab(m.backbone.forward_features(L_in), 4)
    l_logits = m.to_lightness(m.colour_trunk.forward_features(ab_in), 4)
    ab_target = (m.bins.double()[None, :, :, None, None] - small.double()[:, None, 1:]).square().sum(2).argmin(1)
    l_target = (small[:, 0] / 2.0).floor().long().clamp(0, 49)
    assert terms["colour"].item() == pytest.approx(_reference_cross_entropy(ab_logits, ab_target), rel=1e-4)
    assert terms["lightness"].item() == pytest.approx(_reference_cross_entropy(l_logits, l_target), rel=1e-4)
    assert m.colour_trunk.in_channels == 2 and m.backbone.in_channels == 1


# -- the second trunk --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small", "alexnet", "nin", "sngan", "resnet18"])
def test_with_in_channels_copies_every_weight_but_the_input_convolutions_which_start_afresh(name):
    torch.manual_seed(0)
    original = build_backbone(name, 8, in_channels=1, **({} if name == "resnet18" else dict(width=0.25)))
    before = {k: v.clone() for k, v in original.state_dict().items()}
    copy = with_in_channels(original, 2, image_size=8)
    assert copy.in_channels == 2 and original.in_channels == 1
    assert all(torch.equal(v, before[k]) for k, v in original.state_dict().items())  # the original is untouched
    changed = {n for n, m in copy.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 2}
    assert changed == {n for n, m in original.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 1}
    assert len(changed) == (2 if name == "sngan" else 1)  # SNGAN's first block reads the images twice
    for k, v in copy.state_dict().items():
        if k.rpartition(".")[0] in changed:
            assert v.shape[1] == 2 if k.endswith("weight") else True
            if k.endswith("weight"):  # PyTorch's default: uniform within 1 / sqrt(fan_in)
                assert v.abs().max() <= 1 / math.sqrt(v[0].numel()) + 1e-6
        else:
            assert torch.equal(v, before[k]), k
    assert copy(torch.rand(3, 2, 8, 8)).shape == original(torch.rand(3, 1, 8, 8)).shape
    copy.train()
    copy(torch.rand(3, 2, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in copy.parameters()) and all(p.grad is None for p in original.parameters())


def test_with_in_channels_works_for_a_foreign_module_and_refuses_what_it_cannot_adapt():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert with_in_channels(net, 5, image_size=8)(torch.rand(2, 5, 8, 8)).shape == (2, 4)
    with pytest.raises(UserError, match="no Conv2d"):
        with_in_channels(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), 2)
    with pytest.raises(UserError, match="does not run"):  # a later convolution takes 3 channels too
        with_in_channels(nn.Sequential(nn.Conv2d(3, 3, 3), nn.Conv2d(3, 4, 3)), 2, image_size=8)
    with pytest.raises(UserError, match="at least 1"):
        with_in_channels(net, 0)


# -- the evaluated encoder ---------------------------------------------------------------------------------------


def test_the_encoder_concatenates_the_l_trunk_on_l_and_the_ab_trunk_on_ab_layer_by_layer():
    m = method().eval()
    rgb = torch.rand(3, 3, 16, 16)
    lab = rgb_to_lab(rgb)
    L_in, ab_in = (lab[:, :1] - 50) / 50, lab[:, 1:] / 110
    encoder = m.encoder()
    x = normalize(rgb, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(encoder(x), torch.cat([m.backbone(L_in), m.colour_trunk(ab_in)], 1), atol=1e-4,
                               rtol=1e-4)
    stages = encoder.forward_stages(x)
    assert encoder.stage_names == m.backbone.stage_names and encoder.image_size == 16
    for s, a, b, c in zip(stages, m.backbone.forward_stages(L_in), m.colour_trunk.forward_stages(ab_in),
                          stage_channels(m.backbone), strict=True):
        assert s.shape == (3, 2 * c, *a.shape[2:])
        torch.testing.assert_close(s, torch.cat([a, b], 1), atol=1e-4, rtol=1e-4)
    names = {f"lightness_trunk.{k}" for k, _ in m.backbone.named_parameters()}
    names |= {f"colour_trunk.{k}" for k, _ in m.colour_trunk.named_parameters()}
    assert set(dict(encoder.named_parameters())) == names
    pooled = extract_features(encoder, SHAPES.test.images[:5], 16, stages=True)  # what the per-layer probes read
    assert [f.shape for f in pooled] == [(5, pool_stage(s).shape[1]) for s in stages]


# -- views, outputs, options ---------------------------------------------------------------------------------------


def test_views_show_both_inputs_and_exactly_the_targets_of_the_step():
    m = method()
    images = SHAPES.pretrain.images[:4]
    L_row, ab_target_row, ab_row, l_target_row = m.views(batch(images))
    _, small, ab_target, l_target = m._split(augmented(images, m.aug, 16, torch.Generator().manual_seed(2)))
    lab = rgb_to_lab(augmented(images, m.aug, 16, torch.Generator().manual_seed(2)))
    torch.testing.assert_close(L_row.images, (lab[:, :1] / 100).clamp(0, 1))
    nearest = m.bins[ab_target].permute(0, 3, 1, 2)
    torch.testing.assert_close(ab_target_row.images, lab_to_rgb(torch.cat([small[:, :1], nearest], 1)))
    torch.testing.assert_close(ab_row.images, lab_to_rgb(torch.cat([torch.full_like(lab[:, :1], 50), lab[:, 1:]], 1)))
    torch.testing.assert_close(l_target_row.images[:, 0], (2 * l_target + 1).float() / 100)  # the bins' centres
    for p in (L_row, ab_target_row, ab_row, l_target_row):
        assert len(p.images) == 4 and p.images.min() >= 0 and p.images.max() <= 1


def test_outputs_are_the_annealed_means_of_both_decoders_on_the_test_images():
    m = method().eval()
    images = SHAPES.test.images[:4]
    rows = m.outputs(images, torch.Generator())
    assert len(rows) == 4 and all(len(r.images) == 4 and 0 <= r.images.min() <= r.images.max() <= 1 for r in rows)
    lab = rgb_to_lab(resize(images, 16))
    ab_logits = m.to_ab(m.backbone.forward_features((lab[:, :1] - 50) / 50), 4)
    l_logits = m.to_lightness(m.colour_trunk.forward_features(lab[:, 1:] / 110), 4)

    def up(x):
        return F.interpolate(x, size=16, mode="bilinear", align_corners=False)

    torch.testing.assert_close(rows[1].images, lab_to_rgb(torch.cat([lab[:, :1], up(annealed_mean(ab_logits, m.bins))],
                                                                    1)), atol=1e-4, rtol=0)
    torch.testing.assert_close(rows[3].images, (up(annealed_mean(l_logits, m.levels)) / 100).clamp(0, 1), atol=1e-5,
                               rtol=0)


@pytest.mark.parametrize("args", [dict(lightness_bins=1), dict(target_stride=0), dict(temperature=0.0),
                                  dict(decoder_dim=0), dict(grid=0.0), dict(bins=10)])
def test_a_bad_option_is_a_one_line_user_error(args):
    with pytest.raises(UserError) as e:
        build_method(TrainConfig(method="split-brain", image_size=16, method_args=args), 16, 0)
    assert "\n" not in str(e.value)


def test_two_processes_train_split_brain_like_one(tmp_path):
    cfg = TrainConfig(method="split-brain", data="shapes", batch_size=32, image_size=16, steps=3, log_every=1,
                      backbone_args=dict(width=0.5), method_args=dict(decoder_dim=16))
    state = assert_two_ranks_train_like_one(tmp_path, cfg, data="colour-shapes")
    assert any(k.startswith("colour_trunk.") for k in state)
