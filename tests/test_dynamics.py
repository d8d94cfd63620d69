"""State that changes between steps: MoCo's queue and key encoder, NPID's memory bank, split and shuffled BN."""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.data.views import augmented_views
from selfsup.dynamics.bank import bank_update
from selfsup.dynamics.batchnorm import SplitBatchNorm2d, batch_shuffle, batch_unshuffle
from selfsup.dynamics.queue import enqueue
from selfsup.engine.epoch import Epoch
from selfsup.errors import UserError
from selfsup.losses import info_nce, triplet_loss
from selfsup.methods import Batch
from selfsup.methods.moco import MoCo
from selfsup.methods.npid import NPID


def batch(n, num_samples=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    return Batch(images, torch.randint(0, 3, (n,), generator=g), torch.randperm(num_samples, generator=g)[:n],
                 torch.Generator().manual_seed(seed), 0.0)


# --------------------------------------------------------------------------------------------- MoCo queue


@pytest.mark.parametrize("size,per_step,steps", [(12, 4, 2), (12, 4, 5), (8, 8, 3), (6, 2, 7)])
def test_queue_holds_exactly_the_last_keys_in_order(size, per_step, steps):
    queue, ptr = torch.zeros(size, 3), torch.zeros((), dtype=torch.long)
    keys = torch.arange(per_step * steps * 3, dtype=torch.float).view(-1, 3)
    for s in range(steps):
        enqueue(queue, ptr, keys[s * per_step : (s + 1) * per_step])
    assert int(ptr) == steps * per_step % size
    oldest_first = torch.cat([queue[int(ptr):], queue[: int(ptr)]])
    written = min(size, steps * per_step)
    assert torch.equal(oldest_first[size - written :], keys[-written:])
    assert not oldest_first[: size - written].any()  # never written: still the initial contents


def test_queue_size_must_divide_by_the_keys_per_step():
    with pytest.raises(UserError, match="divisible"):
        enqueue(torch.zeros(10, 2), torch.zeros((), dtype=torch.long), torch.ones(4, 2))


def small_moco(**kw):
    torch.manual_seed(0)
    return MoCo(build_backbone("small"), 256, 8, **{"queue_size": 16, "bn_splits": 2, **kw})


@pytest.mark.parametrize("symmetric", [False, True])
def test_moco_step_enqueues_its_keys_and_moves_the_key_encoder(symmetric):
    m = small_moco(momentum=0.9, symmetric=symmetric)
    old_queue = m.queue.clone()
    m.training_step(batch(4)).backward()
    keys = m._keys.clone()
    assert keys.shape == (8 if symmetric else 4, 128)
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(len(keys)))
    key_before = [p.clone() for p in m.key_backbone.parameters()]
    with torch.no_grad():  # a stand-in optimiser step
        for p in m.backbone.parameters():
            p.add_(torch.randn_like(p))
    m.after_step(0.5)
    assert torch.equal(m.queue[: len(keys)], keys) and torch.equal(m.queue[len(keys) :], old_queue[len(keys) :])
    for k0, k1, q in zip(key_before, m.key_backbone.parameters(), m.backbone.parameters()):
        torch.testing.assert_close(k1, 0.9 * k0 + 0.1 * q)


def test_moco_uses_split_bn_in_both_encoders_and_versions_differ():
    v2 = small_moco()
    assert sum(isinstance(m, SplitBatchNorm2d) for m in v2.backbone.modules()) == 4
    assert sum(isinstance(m, SplitBatchNorm2d) for m in v2.key_backbone.modules()) == 4
    v1 = small_moco(version=1)
    assert (v1.temperature, v2.temperature) == (0.07, 0.2)
    assert isinstance(v1.projector, nn.Linear) and not any(isinstance(m, nn.BatchNorm1d) for m in v2.projector)
    assert small_moco(bn_splits=1).backbone.blocks[0][1].__class__ is nn.BatchNorm2d


def test_moco_v2_adds_blur_only_on_large_images():
    torch.manual_seed(0)
    big = MoCo(build_backbone("small"), 256, 64, queue_size=16)
    assert big.aug.blur_p == 0.5 and small_moco().aug.blur_p == 0.0
    assert MoCo(build_backbone("small"), 256, 64, queue_size=16, version=1).aug.blur_p == 0.0


# ---------------------------------------------------------------------------------------------- NPID bank


def test_bank_update_closed_form():
    rows = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    feats = torch.randn(6, 4, dtype=torch.float64)
    got = bank_update(rows, feats, 0.5)
    for r, f, g in zip(rows, feats, got):
        v = 0.5 * r + 0.5 * f / f.norm()
        torch.testing.assert_close(g, v / v.norm())


@pytest.mark.parametrize("loss", ["softmax", "nce"])
@pytest.mark.parametrize("negatives", [16, 0])  # sampled negatives / the whole bank
def test_npid_step_updates_only_its_rows(negatives, loss):
    torch.manual_seed(0)
    m = NPID(build_backbone("small"), 256, 8, num_samples=40, negatives=negatives, loss=loss)
    b = batch(6)
    before = m.bank.clone()
    loss = m.training_step(b)
    assert torch.isfinite(loss)
    with torch.no_grad():  # the step's features, recomputed from the same (seeded) view
        feats = m.head(m.backbone(augmented_views(b.images, m.aug, 8, torch.Generator().manual_seed(0), n=1)))
    m.after_step(0.1)
    torch.testing.assert_close(m.bank[b.indices], bank_update(before[b.indices], feats, 0.5))
    others = torch.ones(40, dtype=torch.bool)
    others[b.indices] = False
    assert torch.equal(m.bank[others], before[others])
    torch.testing.assert_close(m.bank.norm(dim=1), torch.ones(40))


def test_npid_bank_starts_from_the_initial_features_without_touching_bn_statistics():
    from selfsup.data.views import eval_view

    torch.manual_seed(0)
    m = NPID(build_backbone("small"), 256, 8, num_samples=40)
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    buffers = {k: v.clone() for k, v in m.state_dict().items() if "running" in k or "num_batches" in k}
    m.on_epoch_start(Epoch(0, images, m, {}, torch.device("cpu"), seed=0))
    assert all(torch.equal(m.state_dict()[k], v) for k, v in buffers.items())
    ref = copy.deepcopy(m)  # a training-mode forward of its own moves running statistics: use a copy
    with torch.no_grad():  # embedded with the batch's statistics, like a training batch (chunks of 512)
        rows = F.normalize(ref.head(ref.backbone(eval_view(images, 8))), dim=1)
    torch.testing.assert_close(m.bank, rows)
    filled = m.bank.clone()
    m.on_epoch_start(Epoch(1, images, m, {}, torch.device("cpu"), seed=0))  # only before the first epoch
    assert torch.equal(m.bank, filled)


def test_npid_needs_the_dataset_size():
    with pytest.raises(UserError, match="dataset size"):
        NPID(build_backbone("small"), 256, 8)


def test_npid_refuses_an_unknown_loss():
    with pytest.raises(UserError, match="'softmax' or 'nce'"):
        NPID(build_backbone("small"), 256, 8, num_samples=40, loss="nca")


# ------------------------------------------------------------------------------------------ shuffle and BN


@pytest.mark.parametrize("n", [1, 5, 16])
def test_batch_shuffle_and_unshuffle_restore_the_order(n):
    x = torch.arange(n * 3, dtype=torch.float).view(n, 3)
    shuffled, idx = batch_shuffle(x, torch.Generator().manual_seed(1))
    assert sorted(shuffled[:, 0].tolist()) == x[:, 0].tolist()
    if n > 4:
        assert not torch.equal(shuffled, x)
    assert torch.equal(batch_unshuffle(shuffled, idx), x)
    assert torch.equal(batch_unshuffle(shuffled * 2 + 1, idx), x * 2 + 1)  # a per-sample function of it


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("splits", [1, 2, 4])
def test_split_bn_equals_bn_on_each_sub_batch(splits, memory_format):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    split = SplitBatchNorm2d.convert(nn.Sequential(bn), splits)[0]
    assert isinstance(split, SplitBatchNorm2d) and split.state_dict().keys() == bn.state_dict().keys()
    reference = [nn.BatchNorm2d(3) for _ in range(splits)]
    for r in reference:
        r.load_state_dict(bn.state_dict())
    x = (torch.randn(8, 3, 5, 5) * 3 + 1).to(memory_format=memory_format)
    for _ in range(2):  # twice: running statistics carry over
        xs = [x.clone().requires_grad_() for _ in range(2)]
        out = split(xs[0])
        expected = torch.cat([r(part) for r, part in zip(reference, xs[1].chunk(splits))])
        torch.testing.assert_close(out, expected)
        assert out.is_contiguous(memory_format=memory_format)  # the next convolution gets the layout it expects
        grad = torch.randn_like(out)
        out.backward(grad), expected.backward(grad)
        torch.testing.assert_close(xs[0].grad, xs[1].grad)
    torch.testing.assert_close(split.running_mean, torch.stack([r.running_mean for r in reference]).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack([r.running_var for r in reference]).mean(0))
    split.eval()
    plain = nn.BatchNorm2d(3).eval()
    plain.load_state_dict(split.state_dict())
    torch.testing.assert_close(split(x), plain(x))


def test_split_bn_rejects_a_batch_that_does_not_split():
    with pytest.raises(ValueError, match="divisible by 4"):
        SplitBatchNorm2d(3, 4)(torch.randn(6, 3, 2, 2))


def test_a_bad_moco_queue_size_is_refused_before_the_run_folder_is_written(tmp_path):
    import selfsup

    cfg = selfsup.TrainConfig(method="moco", data="digits", batch_size=48, steps=2,
                              method_args={"queue_size": 100, "bn_splits": 1})
    with pytest.raises(UserError, match=r"queue size 100 must be divisible.*\(48 = the global batch\)"):
        selfsup.train(cfg, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()
    cfg.method_args = {"queue_size": 144, "symmetric": True, "bn_splits": 1}  # 3 x 48, not a multiple of 96
    with pytest.raises(UserError, match="96 = the global batch, twice that"):
        selfsup.train(cfg, tmp_path / "run", show_progress=False)


# ------------------------------------------------------------------------------------------------ triplet


def test_triplet_switches_from_random_to_hard_negatives_at_hard_from():
    from selfsup.methods.triplet import Triplet

    torch.manual_seed(0)
    m = Triplet(build_backbone("small"), 256, 8, mining="hard", hard_from=0.5, candidates=4, top_k=2)
    b = batch(8)
    with torch.no_grad():
        x = augmented_views(b.images, m.aug, 8, torch.Generator().manual_seed(0))
        a, p = m.projector(m.backbone(x)).chunk(2)
    for progress, mining, extra in ((0.2, "random", ()), (0.7, "hard", (4, 2))):
        b.progress, b.generator = progress, torch.Generator().manual_seed(0)
        with torch.no_grad():
            got = m.training_step(b)
        g = torch.Generator().manual_seed(0)
        augmented_views(b.images, m.aug, 8, g)  # the draws the step's views consumed
        torch.testing.assert_close(got, triplet_loss(a, p, 0.5, mining, g, *extra))


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(mining="random", top_k=4), "apply to mining: hard"),
    (dict(mining="hard", hard_from=1.5), "hard_from must be in [0, 1]"),
    (dict(mining="semi"), "'hard' or 'random'"),
])
def test_triplet_refuses_bad_options(kwargs, fragment):
    from selfsup.methods.triplet import Triplet

    with pytest.raises(UserError, match=re.escape(fragment)):
        Triplet(build_backbone("small"), 256, 8, **kwargs)


def test_triplet_refuses_more_hard_negatives_than_the_batch_offers():
    from selfsup.methods.triplet import Triplet

    m = Triplet(build_backbone("small"), 256, 8, mining="hard", top_k=8)
    m.check_batch(9)
    with pytest.raises(UserError, match="more than the 7 negatives"):
        m.check_batch(8)


def test_symmetric_moco_encodes_both_views_in_one_pass_as_two_separate_passes_would():
    m = small_moco(symmetric=True)  # bn_splits 2: every split layer holds 2 groups per view
    assert {mod.num_splits for mod in m.backbone.modules() if isinstance(mod, SplitBatchNorm2d)} == {4}
    reference = copy.deepcopy(m)
    for mod in [*reference.backbone.modules(), *reference.key_backbone.modules()]:
        if isinstance(mod, SplitBatchNorm2d):
            mod.num_splits = 2  # one pass per view: 2 groups each
    loss = m.training_step(batch(8))
    loss.backward()

    b = batch(8)  # the same images and generator state
    x1, x2 = augmented_views(b.images, reference.aug, reference.image_size, b.generator).chunk(2)
    keys = []
    with torch.no_grad():
        for xk in (x2, x1):
            shuffled, unshuffle = batch_shuffle(xk, b.generator)
            k = F.normalize(reference.key_projector(reference.key_backbone(shuffled)), dim=1)
            keys.append(batch_unshuffle(k, unshuffle))
    expected = sum(info_nce(reference.projector(reference.backbone(xq)), k, reference.queue, reference.temperature)
                   for xq, k in zip((x1, x2), keys))
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(m._keys, torch.cat(keys))
    for p, r in zip(m.backbone.parameters(), reference.backbone.parameters()):
        torch.testing.assert_close(p.grad, r.grad)


def test_moco_refuses_a_batch_that_its_bn_splits_do_not_divide():
    with pytest.raises(UserError, match="batch of 12 does not split into bn_splits=8"):
        small_moco(bn_splits=8).check_batch(12)


def test_moco_key_encoder_keeps_the_query_encoders_bn_statistics():
    m = small_moco(symmetric=True)
    before = [b.clone() for b in m.key_backbone.buffers()]
    m.training_step(batch(8)).backward()
    assert all(torch.equal(b0, b1) for b0, b1 in zip(before, m.key_backbone.buffers()))  # not tracked there
    assert not all(torch.equal(b0, b1) for b0, b1 in zip(before, m.backbone.buffers()))  # the query encoder's moved
    m.after_step(0.5)
    assert all(torch.equal(k, q) for k, q in zip(m.key_backbone.buffers(), m.backbone.buffers()))
