"""CMC: the trunks' L / ab inputs against skimage image by image, both directions of the loss (in-batch and against the
memory banks) against float64 references of the paper's formula, the bank updates and fill against loops, the
concatenated encoder, views, bad options, and 2 processes vs 1 for both kinds of negatives. (The Lab conversion itself:
tests/test_lab.py; the encoder's stages: tests/test_split_brain.py.)"""

import copy

import pytest
import torch
import torch.nn.functional as F
from skimage import color

from selfsup.backbones import build_backbone
from selfsup.backbones.inputs import LabEncoder
from selfsup.config import TrainConfig
from selfsup.data.ops.base import IMAGENET_MEAN, IMAGENET_STD, normalize, resize
from selfsup.data.ops.lab import lab_to_rgb, rgb_to_lab
from selfsup.data.views import augmented
from selfsup.engine.build import build_method
from selfsup.engine.epoch import Epoch
from selfsup.errors import UserError
from selfsup.losses.multiview import cross_view_nce
from selfsup.methods import Batch
from selfsup.methods.cmc import CMC
from tests.helpers import assert_two_ranks_train_like_one, colour_shapes
from tests.test_lab import _skimage

SHAPES = colour_shapes(60, 16)
N = 40  # training set size of the banks in these tests


def method(**kwargs) -> CMC:
    torch.manual_seed(0)
    return CMC(build_backbone("small", 16, in_channels=1, width=0.25), 64, 16, num_samples=N, proj_dim=8, **kwargs)


def batch(n: int = 6, seed: int = 2) -> Batch:
    indices = torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:n]  # rows out of order
    return Batch(SHAPES.pretrain.images[:n], None, indices, torch.Generator().manual_seed(seed), 0.0)


def record_inputs(m: CMC) -> dict:
    seen = {}
    m.backbone.register_forward_pre_hook(lambda _, args: seen.__setitem__("L", args[0]))
    m.colour_trunk.register_forward_pre_hook(lambda _, args: seen.__setitem__("ab", args[0]))
    return seen


def h(u: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
    """The paper's critic: exp(cos(u, v) / T), in float64."""
    return torch.exp(u.double() @ v.double() / (u.double().norm() * v.double().norm()) / t)


def contrast(anchors: torch.Tensor, positives: list[torch.Tensor], candidates: list[list[torch.Tensor]],
             t: float) -> torch.Tensor:
    """Eq. 2, one anchor at a time: -log h(a, positive) / sum over its candidates (which include the positive)."""
    losses = [-torch.log(h(a, p, t) / sum(h(a, c, t) for c in cs)) for a, p, cs in zip(anchors, positives, candidates)]
    return torch.stack(losses).mean()


# -- the views ----------------------------------------------------------------------------------------------------


def test_the_trunks_see_l_and_ab_of_one_augmented_view_as_skimage_converts_it_image_by_image():
    m = method()
    seen = record_inputs(m)
    b = batch()
    m.training_step(b)
    rgb = augmented(b.images, m.aug, 16, torch.Generator().manual_seed(2))
    lab = _skimage(color.rgb2lab, rgb)  # float64, image by image
    torch.testing.assert_close(seen["L"].double(), (lab[:, :1] - 50) / 50, atol=1e-4, rtol=0)
    torch.testing.assert_close(seen["ab"].double(), lab[:, 1:] / 110, atol=1e-4, rtol=0)
    assert (m.aug.jitter_p, m.aug.gray_p, m.aug.crop_scale) == (0.0, 0.0, (0.2, 1.0))  # crops and flips only


def test_views_show_the_steps_l_and_ab_captioned_as_each_others_positives():
    m = method()
    b = batch(4)
    L_row, ab_row = m.views(b)
    lab = rgb_to_lab(augmented(b.images, m.aug, 16, torch.Generator().manual_seed(2)))
    torch.testing.assert_close(L_row.images, (lab[:, :1] / 100).clamp(0, 1))
    torch.testing.assert_close(ab_row.images, lab_to_rgb(torch.cat([torch.full_like(lab[:, :1], 50), lab[:, 1:]], 1)))
    assert list(L_row.captions) == list(ab_row.captions) == [f"image {i}" for i in b.indices.tolist()]
    assert "ab below" in L_row.title and "L above" in ab_row.title
    assert all(len(r.images) == 4 and 0 <= r.images.min() <= r.images.max() <= 1 for r in (L_row, ab_row))


# -- the loss -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,t", [(1, 0.07), (5, 0.07), (8, 0.5)])
def test_cross_view_nce_is_both_directions_of_eq_2_over_the_batch_with_their_gradients(n, t):
    g = torch.Generator().manual_seed(n)
    z1, z2 = (torch.randn(n, 6, generator=g, requires_grad=True) for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        l12, l21 = cross_view_nce(z1, z2, t)
    assert l12.dtype == l21.dtype == torch.float32
    r1, r2 = (z.detach().double().requires_grad_() for z in (z1, z2))
    want12 = contrast(r1, list(r2), [list(r2)] * n, t)  # view 1 anchors: its own view 2 among all view 2s
    want21 = contrast(r2, list(r1), [list(r1)] * n, t)
    assert l12.item() == pytest.approx(want12.item(), rel=1e-5) and l21.item() == pytest.approx(want21.item(), rel=1e-5)
    (l12 + l21).backward()
    (want12 + want21).backward()
    torch.testing.assert_close(z1.grad.double(), r1.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(z2.grad.double(), r2.grad, atol=1e-5, rtol=1e-4)


def projections(m: CMC, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's projections, recomputed from the same seeded view (batch norm sees the same batch)."""
    lab = rgb_to_lab(augmented(b.images, m.aug, 16, torch.Generator().manual_seed(2)))
    return m.lightness_head(m.backbone((lab[:, :1] - 50) / 50)), m.colour_head(m.colour_trunk(lab[:, 1:] / 110))


@pytest.mark.parametrize("num_negatives", [16, 0])  # sampled rows / the whole bank
def test_the_bank_loss_contrasts_each_view_with_the_other_views_bank_in_both_directions(num_negatives):
    m = method(num_negatives=num_negatives, temperature=0.2)
    b = batch()
    terms = m.training_step(b)
    assert set(terms) == {"l_anchors", "ab_anchors"}
    g = torch.Generator().manual_seed(2)
    augmented(b.images, m.aug, 16, g)  # the step draws its negatives after the view
    picks = torch.randint(N, (num_negatives,), generator=g).tolist() if num_negatives else None
    z_l, z_ab = projections(m, b)
    for name, anchors, bank in (("l_anchors", z_l, m.memory[1]), ("ab_anchors", z_ab, m.memory[0])):
        positives = [bank[i] for i in b.indices.tolist()]
        if picks is None:  # the softmax over every row, its own once
            candidates = [list(bank)] * len(anchors)
        else:  # its own row, then the shared noise rows
            candidates = [[p] + [bank[j] for j in picks] for p in positives]
        want = contrast(anchors.detach(), positives, candidates, 0.2)
        assert terms[name].item() == pytest.approx(want.item(), rel=1e-4), name


def test_the_batch_loss_is_cross_view_nce_of_both_projections():
    m = method(negatives="batch")
    b = batch()
    terms = m.training_step(b)
    z_l, z_ab = projections(m, b)
    want = contrast(z_l.detach(), list(z_ab.detach()), [list(z_ab.detach())] * 6, 0.07)
    assert terms["l_anchors"].item() == pytest.approx(want.item(), rel=1e-4)
    want = contrast(z_ab.detach(), list(z_l.detach()), [list(z_l.detach())] * 6, 0.07)
    assert terms["ab_anchors"].item() == pytest.approx(want.item(), rel=1e-4)
    assert not hasattr(m, "memory")


# -- the memory banks ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.5, 0.9])
def test_after_the_step_exactly_the_batchs_rows_of_both_banks_move_towards_its_projections(momentum):
    m = method(bank_momentum=momentum, num_negatives=16)
    b = batch()
    before = m.memory.clone()
    m.training_step(b)
    assert torch.equal(m.memory, before)  # nothing is written before the optimiser steps
    with torch.no_grad():
        z = projections(m, b)
    m.after_step(0.1)
    for view in range(2):
        for row in range(N):
            if row in b.indices.tolist():
                f = z[view][b.indices.tolist().index(row)].double()
                v = momentum * before[view, row].double() + (1 - momentum) * f / f.norm()
                torch.testing.assert_close(m.memory[view, row].double(), v / v.norm(), atol=1e-5, rtol=0)
            else:
                assert torch.equal(m.memory[view, row], before[view, row])
    torch.testing.assert_close(m.memory.norm(dim=2), torch.ones(2, N))


def test_the_banks_start_from_the_initial_projections_of_every_image_once():
    m = method()
    images = SHAPES.pretrain.images[:N]
    buffers = {k: v.clone() for k, v in m.state_dict().items() if "running" in k or "num_batches" in k}
    m.on_epoch_start(Epoch(0, images, m, {}, torch.device("cpu"), seed=0))
    assert all(torch.equal(m.state_dict()[k], v) for k, v in buffers.items())
    ref = copy.deepcopy(m)  # its training-mode forward moves running statistics: a copy
    with torch.no_grad():
        lab = rgb_to_lab(resize(images, 16))
        z_l = ref.lightness_head(ref.backbone((lab[:, :1] - 50) / 50))
        z_ab = ref.colour_head(ref.colour_trunk(lab[:, 1:] / 110))
    torch.testing.assert_close(m.memory[0], F.normalize(z_l, dim=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(m.memory[1], F.normalize(z_ab, dim=1), atol=1e-5, rtol=0)
    filled = m.memory.clone()
    m.on_epoch_start(Epoch(1, images, m, {}, torch.device("cpu"), seed=0))
    assert torch.equal(m.memory, filled)


# -- encoder, options, ranks -----------------------------------------------------------------------------------------


def test_the_encoder_concatenates_the_l_trunk_on_l_and_the_ab_trunk_on_ab():
    m = method().eval()
    rgb = torch.rand(3, 3, 16, 16)
    lab = rgb_to_lab(rgb)
    encoder = m.encoder()
    assert isinstance(encoder, LabEncoder) and encoder.lightness_trunk is m.backbone
    assert encoder.colour_trunk is m.colour_trunk and m.colour_trunk.in_channels == 2 and m.backbone.in_channels == 1
    want = torch.cat([m.backbone((lab[:, :1] - 50) / 50), m.colour_trunk(lab[:, 1:] / 110)], 1)
    torch.testing.assert_close(encoder(normalize(rgb, IMAGENET_MEAN, IMAGENET_STD)), want, atol=1e-4, rtol=1e-4)
    assert want.shape == (3, 2 * 64)


@pytest.mark.parametrize("args", [dict(negatives="queue"), dict(temperature=0.0), dict(proj_dim=0),
                                  dict(num_negatives=-1), dict(bank_momentum=1.0), dict(bank_size=10)])
def test_a_bad_option_is_a_one_line_user_error(args):
    with pytest.raises(UserError) as e:
        build_method(TrainConfig(method="cmc", image_size=16, method_args=args), 16, 0, num_samples=N)
    assert "\n" not in str(e.value)


def test_the_banks_need_the_dataset_size_and_in_batch_negatives_do_not():
    with pytest.raises(UserError, match="dataset size"):
        build_method(TrainConfig(method="cmc", image_size=16), 16, 0)
    build_method(TrainConfig(method="cmc", image_size=16, method_args=dict(negatives="batch")), 16, 0)


@pytest.mark.parametrize("args", [dict(negatives="bank", num_negatives=64), dict(negatives="batch")],
                         ids=["bank", "batch"])
def test_two_processes_train_cmc_like_one(tmp_path, args):
    cfg = TrainConfig(method="cmc", data="shapes", batch_size=32, image_size=16, steps=3, log_every=1,
                      backbone_args=dict(width=0.5), method_args=args)
    state = assert_two_ranks_train_like_one(tmp_path, cfg, data="colour-shapes")
    assert any(k.startswith("colour_trunk.") for k in state) and ("memory" in state) == (args["negatives"] == "bank")
