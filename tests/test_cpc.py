"""CPC v2: the patch grid and its per-patch augmentation against per-image loops, their distribution through a step,
the causal context network, the loss against a float64 loop of the paper's formula, the layer-norm trunk, a step
against a per-image reference, the views, bad options, and 2 processes vs 1."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.backbones.norm import layer_norm_trunk
from selfsup.config import TrainConfig
from selfsup.data.augment import AugmentConfig
from selfsup.data.ops.base import IMAGENET_MEAN, IMAGENET_STD
from selfsup.data.ops.patch_grid import augment_patches, grid_geometry, patch_grid
from selfsup.data.views import augmented
from selfsup.errors import UserError
from selfsup.heads.pixelcnn import CausalContext, MaskedConv2d
from selfsup.losses.predictive import cpc_loss
from selfsup.methods import Batch
from selfsup.methods.cpc import CPC
from tests.helpers import Recorder, assert_two_ranks_train_like_one

MEAN, STD = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _batch(images: torch.Tensor, seed: int = 0) -> Batch:
    return Batch(images, None, torch.arange(len(images)), torch.Generator().manual_seed(seed), 0.0)


# ------------------------------------------------------------------------------------------------- the patch grid


def test_grid_geometry_is_the_papers_and_the_largest_grid_that_fits():
    assert grid_geometry(256) == (64, 32)  # CPC: 64 px patches at stride 32, a 7 x 7 grid of a 256 px crop
    assert grid_geometry(224) == (56, 28) and grid_geometry(32) == (8, 4) and grid_geometry(16) == (4, 2)
    for size in range(7, 100):
        p, s = grid_geometry(size)
        assert s == max(1, p // 2) and 6 * s + p <= size
        assert 6 * max(1, (p + 1) // 2) + p + 1 > size  # one pixel more does not fit
    assert grid_geometry(32, grid=5, patch=8, stride=6) == (8, 6)


@pytest.mark.parametrize("args", [(5,), (32, 0), (32, 7, 33), (32, 7, 8, 5), (32, 7, 0, 4), (32, 7, 8, 0)])
def test_grid_geometry_refuses_what_does_not_fit(args):
    with pytest.raises(UserError):
        grid_geometry(*args)


@pytest.mark.parametrize("shape, patch, stride, grid", [((2, 3, 16, 16), 4, 2, 7), ((3, 2, 19, 23), 5, 3, 4),
                                                        ((1, 3, 9, 9), 3, 3, 3), ((2, 1, 8, 8), 8, 1, 1)])
def test_patch_grid_matches_per_image_slices_of_the_centred_window(shape, patch, stride, grid):
    images = torch.rand(shape)
    out = patch_grid(images, patch, stride, grid)
    b, c, h, w = shape
    span = (grid - 1) * stride + patch
    top, left = (h - span) // 2, (w - span) // 2
    expected = torch.stack([torch.stack([images[n, :, top + i * stride: top + i * stride + patch,
                                                left + j * stride: left + j * stride + patch]
                                         for i in range(grid) for j in range(grid)]) for n in range(b)])
    assert out.shape == (b, grid * grid, c, patch, patch) and out.is_contiguous()
    assert torch.equal(out, expected)


def test_patches_sit_at_their_grid_positions_and_overlap_their_neighbours():
    h = w = 32
    coords = torch.arange(h * w, dtype=torch.float64).view(1, 1, h, w)  # every pixel holds y * W + x
    patches = patch_grid(coords, 8, 4, 7).view(7, 7, 8, 8)
    for i in range(7):
        for j in range(7):
            assert patches[i, j, 0, 0] == (i * 4) * w + j * 4  # the 32 px window fills the image
    # neighbours share p - s = 4 rows / columns
    assert torch.equal(patches[:, :-1, :, 4:], patches[:, 1:, :, :4])
    assert torch.equal(patches[:-1, :, 4:], patches[1:, :, :4])


def test_augment_patches_matches_a_per_patch_reference():
    g = torch.Generator().manual_seed(0)
    patches = torch.randn(3, 5, 3, 4, 4, generator=g)
    flips = torch.rand(3, 5, generator=g) < 0.5
    keep = torch.randint(3, (3, 5), generator=g)
    out = augment_patches(patches, flips, keep)
    for b in range(3):
        for t in range(5):
            p = patches[b, t].flip(-1) if flips[b, t] else patches[b, t]
            expected = torch.zeros_like(p)
            expected[keep[b, t]] = p[keep[b, t]]
            assert torch.equal(out[b, t], expected)
    assert torch.equal(augment_patches(patches, None, None), patches)


def test_a_step_flips_and_colour_drops_every_patch_independently_with_the_right_frequencies():
    """Every patch of a horizontal ramp shows whether it was flipped (its ramp falls) and which channel it kept (the
    only non-zero one after normalisation); over 64 x 49 patches the rates are the options'."""
    ramp = torch.linspace(0.2, 0.9, 16).expand(64, 3, 16, 16)
    images = (ramp * 255).round().to(torch.uint8)
    for flip_p in (0.5, 0.2):
        method = CPC(build_backbone("small"), 256, 16, AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                                                                     flip_p=0.0, jitter_p=0.0, gray_p=0.0),
                     flip_p=flip_p)
        patches = method._patches(images, torch.Generator().manual_seed(1))  # (64, 49, 3, 4, 4)
        nonzero = patches.abs().sum((-2, -1)) > 0  # (64, 49, 3)
        assert bool((nonzero.sum(-1) == 1).all())  # exactly one channel kept
        kept = nonzero.float().argmax(-1)
        row = patches.gather(2, kept[..., None, None, None].expand(-1, -1, 1, 4, 4))[:, :, 0, 0]  # (64, 49, 4)
        flipped = row[..., 0] > row[..., -1]
        n = flipped.numel()
        assert abs(flipped.float().mean().item() - flip_p) < 4 * (flip_p * (1 - flip_p) / n) ** 0.5
        for c in range(3):
            assert abs((kept == c).float().mean().item() - 1 / 3) < 4 * (2 / 9 / n) ** 0.5
        # per patch, not per image: almost every image mixes flipped and unflipped patches, and kept channels
        assert (flipped.any(1) & ~flipped.all(1)).float().mean() > 0.9
        assert bool(((kept == 0).any(1) & (kept == 1).any(1) & (kept == 2).any(1)).all())
        # flips and kept channels are independent draws
        both = (flipped & (kept == 0)).float().mean().item()
        assert abs(both - flip_p / 3) < 4 * (flip_p / 3 / n) ** 0.5


# -------------------------------------------------------------------------------------------- the context network


def test_masked_conv_output_row_ignores_the_rows_below():
    torch.manual_seed(0)
    conv = MaskedConv2d(2, 3, 5)
    assert bool((conv.weight[:, :, 3:] == 0).all()) and bool((conv.weight[:, :, :3] != 0).all())
    x = torch.randn(1, 2, 6, 6)
    for i in range(6):
        changed = x.clone()
        changed[:, :, i + 1:] = torch.randn_like(changed[:, :, i + 1:])
        assert torch.equal(conv(x)[:, :, : i + 1], conv(changed)[:, :, : i + 1])


def test_the_context_of_a_row_has_exactly_zero_gradient_from_the_rows_below_and_sees_the_rows_above():
    torch.manual_seed(0)
    context = CausalContext(4, hidden=6, blocks=3).double()
    grid = 7
    z = torch.randn(2, 4, grid, grid, dtype=torch.float64, requires_grad=True)
    c = context(z)
    weights = torch.randn_like(c)
    for i in range(grid):
        for j in range(grid):
            (grad,) = torch.autograd.grad((c[:, :, i, j] * weights[:, :, i, j]).sum(), z, retain_graph=True)
            assert bool((grad[:, :, i + 1:] == 0).all()), (i, j)
            assert bool((grad[:, :, i] != 0).any())
            # 3 blocks reach 3 rows up and 3 columns to each side
            reach = max(0, i - 3)
            assert bool((grad[:, :, reach: i + 1, max(0, j - 3): j + 4] != 0).any(1).any(0).all()), (i, j)


# ------------------------------------------------------------------------------------------------------- the loss


def _loss_reference(z: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """-log exp(p . z_target) / sum_l exp(p . z_l) over every patch vector z_l of the batch, in loops, float64;
    the mean of every offset's mean."""
    z, predictions = z.double(), predictions.double()
    b, _, g, _ = z.shape
    vectors = [z[n, :, i, j] for n in range(b) for i in range(g) for j in range(g)]
    per_offset = []
    for k in range(1, predictions.shape[1] + 1):
        terms = []
        for n in range(b):
            for i in range(g - k):
                for j in range(g):
                    p = predictions[n, k - 1, :, i, j]
                    scores = torch.stack([p @ v for v in vectors])
                    terms.append(torch.logsumexp(scores, 0) - p @ z[n, :, i + k, j])
        per_offset.append(torch.stack(terms).mean())
    return torch.stack(per_offset).mean()


@pytest.mark.parametrize("b, c, g, steps", [(3, 4, 4, 2), (2, 5, 5, 4), (1, 3, 2, 1)])
def test_cpc_loss_and_its_gradients_match_the_papers_formula_in_float64_loops(b, c, g, steps):
    gen = torch.Generator().manual_seed(b * 10 + g)
    z = torch.randn(b, c, g, g, generator=gen, requires_grad=True)
    predictions = torch.randn(b, steps, c, g, g, generator=gen, requires_grad=True)
    z64 = z.detach().double().requires_grad_()
    p64 = predictions.detach().double().requires_grad_()
    loss, expected = cpc_loss(z, predictions), _loss_reference(z64, p64)
    torch.testing.assert_close(loss.double(), expected, atol=1e-5, rtol=1e-5)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(z.grad.double(), z64.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(predictions.grad.double(), p64.grad, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------- the layer-norm trunk


def test_layer_norm_trunk_replaces_every_batch_norm_by_a_per_sample_layer_norm_with_its_weights():
    torch.manual_seed(0)
    net = build_backbone("small", width=0.25)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        nn.init.normal_(m.weight)
        nn.init.normal_(m.bias)
    weights = [(m.weight.detach().clone(), m.bias.detach().clone(), m.eps) for m in bns]
    layer_norm_trunk(net)
    gns = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()) and len(gns) == len(bns)
    for gn, (w, b, eps) in zip(gns, weights):
        assert gn.num_groups == 1 and torch.equal(gn.weight, w) and torch.equal(gn.bias, b) and gn.eps == eps
        x = torch.randn(3, gn.num_channels, 5, 5)
        mean, var = x.mean((1, 2, 3), keepdim=True), x.var((1, 2, 3), unbiased=False, keepdim=True)
        expected = (x - mean) / (var + eps).sqrt() * w.view(-1, 1, 1) + b.view(-1, 1, 1)
        torch.testing.assert_close(gn(x), expected, atol=1e-5, rtol=1e-5)
    net.train()  # a sample's features no longer depend on the rest of the batch, even in training mode
    images = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(net(images)[:1], net(images[:1]), atol=1e-5, rtol=1e-5)


def test_layer_norm_trunk_refuses_batch_norms_it_cannot_replace_and_cpc_keeps_them_with_norm_batch():
    with pytest.raises(UserError, match="BatchNorm1d"):
        layer_norm_trunk(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
    method = CPC(build_backbone("small", width=0.25), 64, 16, norm="batch")
    assert any(isinstance(m, nn.BatchNorm2d) for m in method.backbone.modules())
    assert method.encoder() is method.backbone


# ---------------------------------------------------------------------------------------------------- the method


def test_a_step_feeds_the_trunk_the_patches_of_a_per_image_reference_and_scores_their_grid():
    torch.manual_seed(0)
    method = CPC(Recorder(), 8, 16, steps=2, hidden=5, blocks=2)
    images = torch.randint(0, 256, (3, 3, 20, 20), dtype=torch.uint8)
    loss = method.training_step(_batch(images, 7))
    # the reference draws the same parameters in the same order: the view, 49 flips, 49 kept channels per image
    g = torch.Generator().manual_seed(7)
    x = (augmented(images, method.aug, 16, g) - MEAN) / STD
    flips = torch.rand(3 * 49, generator=g) < 0.5
    keep = torch.randint(3, (3, 49), generator=g)
    expected = []
    for b in range(3):
        for t in range(49):
            i, j = divmod(t, 7)
            p = x[b, :, 2 * i: 2 * i + 4, 2 * j: 2 * j + 4]
            p = p.flip(-1) if flips[b * 49 + t] else p
            expected.append(torch.zeros_like(p).index_copy(0, keep[b, t].view(1), p[keep[b, t]].unsqueeze(0)))
    expected = torch.stack(expected)
    torch.testing.assert_close(method.backbone.seen, expected, atol=1e-5, rtol=1e-5)
    feats = method.backbone.proj(expected.mean((2, 3)))
    z = torch.stack([torch.stack([torch.stack([feats[b * 49 + i * 7 + j] for j in range(7)], -1) for i in range(7)],
                                 -2) for b in range(3)])  # z[b, :, i, j] is patch (i, j) of image b
    predictions = method.predict(method.context(z)).view(3, 2, 8, 7, 7)
    torch.testing.assert_close(loss.double(), _loss_reference(z, predictions), atol=1e-5, rtol=1e-5)


def test_views_show_the_grid_and_the_rows_one_offset_predicts_from_the_step_s_patches():
    torch.manual_seed(0)
    method = CPC(build_backbone("small", width=0.25), 64, 16, steps=3)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    grid, target = method.views(_batch(images, 3))
    patches = method._patches(images, torch.Generator().manual_seed(3))
    assert len(grid.images) == len(target.images) == 2 and target.captions == ["context rows 0-3, predicted row 6 "
                                                                                 "(offset 3)"] * 2
    cell = 5  # 4 px patches and a 1 px gap

    def patch(picture, i, j):
        return picture[:, :, i * cell: i * cell + 4, j * cell: j * cell + 4]

    for i in range(7):
        for j in range(7):
            shown = patch(grid.images, i, j)
            if i <= 3 or i == 6:  # the context rows and the predicted row
                assert torch.equal(patch(target.images, i, j), shown)
            else:
                assert bool((patch(target.images, i, j) == 1).all())
            lo, hi = patches[:, i * 7 + j].amin((1, 2, 3)), patches[:, i * 7 + j].amax((1, 2, 3))
            torch.testing.assert_close(shown, (patches[:, i * 7 + j] - lo.view(-1, 1, 1, 1)) /
                                       (hi - lo).clamp_min(1e-8).view(-1, 1, 1, 1))


@pytest.mark.parametrize("options", [dict(patch=17), dict(grid=4, steps=4), dict(grid=7, steps=0),
                                     dict(grid=8, patch=4, stride=2), dict(norm="instance"), dict(flip_p=1.5),
                                     dict(hidden=0)])
def test_bad_options_are_refused_with_a_user_error(options):
    with pytest.raises(UserError, match="cpc|patch|grid"):
        CPC(build_backbone("small", width=0.25), 64, 16, **options)


def test_two_processes_train_cpc_like_one(tmp_path):
    cfg = TrainConfig(method="cpc", data="digits", batch_size=16, image_size=16, steps=3, log_every=1,
                      backbone_args=dict(width=0.25), method_args=dict(hidden=16, blocks=1, steps=2))
    assert_two_ranks_train_like_one(tmp_path, cfg)
