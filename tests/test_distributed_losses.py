"""Contrastive losses and MoCo's queue under 2 gloo processes equal one process on the concatenated batch.

Convention (that of DDP): each rank's loss is a function of its local inputs; DDP averages the ranks'
gradients, so the per-rank loss averaged over ranks must equal the single-process loss, and the gradient a
rank gets for its local inputs, divided by the world size, must equal the single-process gradient rows.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.data.views import augmented_views
from selfsup.dynamics.batchnorm import SplitBatchNorm2d, batch_shuffle, batch_unshuffle
from selfsup.losses import barlow_twins_loss, cross_correlation, nt_xent, supcon_loss, triplet_loss
from selfsup.methods import Batch
from selfsup.methods.moco import MoCo
from tests.helpers import run_ranks

WORLD = 2


def value_and_grads(loss_fn, *inputs):
    inputs = [x.clone().requires_grad_() for x in inputs]
    loss = loss_fn(*inputs)
    return loss.detach(), torch.autograd.grad(loss, inputs)


def local(x, rank):
    return x.chunk(WORLD)[rank]


def mean_over_ranks(x):
    x = x.clone()
    dist.all_reduce(x)
    return x / WORLD


def check_against_single(rank, loss_fn, inputs, single):
    """``single`` = (loss, grads) of ``loss_fn`` on the full inputs in one process."""
    loss, grads = value_and_grads(loss_fn, *(local(x, rank) for x in inputs))
    torch.testing.assert_close(mean_over_ranks(loss), single[0])
    for g, full in zip(grads, single[1]):
        torch.testing.assert_close(g / WORLD, local(full, rank))


def pair(n=8, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------- NT-Xent


def _nt_xent_rank(rank, single_nt, single_triplet):
    z1, z2 = pair()
    check_against_single(rank, lambda a, b: nt_xent(a, b, 0.3), (z1, z2), single_nt)
    check_against_single(rank, lambda a, b: triplet_loss(a, b, 0.5), (z1, z2), single_triplet)


def test_nt_xent_and_triplet_losses_and_gradients_under_two_ranks_equal_one_process():
    z1, z2 = pair()
    single_nt = value_and_grads(lambda a, b: nt_xent(a, b, 0.3), z1, z2)
    single_triplet = value_and_grads(lambda a, b: triplet_loss(a, b, 0.5), z1, z2)
    run_ranks(_nt_xent_rank, WORLD, single_nt, single_triplet)


# ------------------------------------------------------------------------------------------- Barlow Twins


def _barlow_rank(rank, single_c, single_loss):
    z1, z2 = pair(d=4, seed=1)
    torch.testing.assert_close(cross_correlation(local(z1, rank), local(z2, rank)), single_c)
    check_against_single(rank, lambda a, b: barlow_twins_loss(a, b, 0.0051), (z1, z2), single_loss)


def test_barlow_cross_correlation_and_loss_under_two_ranks_equal_one_process():
    z1, z2 = pair(d=4, seed=1)
    single_loss = value_and_grads(lambda a, b: barlow_twins_loss(a, b, 0.0051), z1, z2)
    run_ranks(_barlow_rank, WORLD, cross_correlation(z1, z2), single_loss)


# ------------------------------------------------------------------------------------------------ SupCon

LABELS = torch.tensor([0, 1, 0, 2, 1, 3, 3, 0])  # two views: every anchor has a positive
LONELY = torch.tensor([0, 1, 2, 3, 0, 4, 5, 0])  # one view: 3 anchors with a positive on rank 0, 2 on rank 1


def _supcon_rank(rank, single_two_views, single_one_view):
    z1, z2 = pair(seed=2)
    check_against_single(rank, lambda a, b: supcon_loss(a, b, local(LABELS, rank), 0.1), (z1, z2),
                         single_two_views)
    check_against_single(rank, lambda a: supcon_loss(a, None, local(LONELY, rank), 0.1), (z1,), single_one_view)


def test_supcon_with_gathered_labels_under_two_ranks_equals_one_process():
    z1, z2 = pair(seed=2)
    two_views = value_and_grads(lambda a, b: supcon_loss(a, b, LABELS, 0.1), z1, z2)
    one_view = value_and_grads(lambda a: supcon_loss(a, None, LONELY, 0.1), z1)
    run_ranks(_supcon_rank, WORLD, two_views, one_view)


# ---------------------------------------------------------------------------------------------- MoCo queue


class Flat(nn.Module):
    """A BN-free backbone: its keys do not depend on which samples share a batch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 16)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _moco_rank(rank, images):
    x = torch.arange(12.0).view(6, 2) + 100 * rank
    shuffled, idx = batch_shuffle(x, torch.Generator().manual_seed(0))
    everything = torch.cat([torch.arange(12.0).view(6, 2) + 100 * r for r in range(WORLD)])
    parts = [torch.empty_like(shuffled) for _ in range(WORLD)]
    dist.all_gather(parts, shuffled)
    shuffled_all = torch.cat(parts)  # one global permutation, not two local ones
    assert sorted(shuffled_all[:, 0].tolist()) == sorted(everything[:, 0].tolist())
    assert not torch.equal(shuffled_all, everything)
    assert torch.equal(batch_unshuffle(shuffled, idx), x)

    torch.manual_seed(0)
    moco = MoCo(Flat(), 16, 8, queue_size=8, proj_dim=4)
    n = 2
    batch = Batch(local(images, rank), None, torch.arange(n), torch.Generator().manual_seed(5), 0.0)
    moco.training_step(batch)
    moco.after_step(0.1)
    with torch.no_grad():  # this rank's keys, recomputed from the same seeded views
        _, x2 = augmented_views(batch.images, moco.aug, 8, torch.Generator().manual_seed(5)).chunk(2)
        mine = F.normalize(moco.key_projector(moco.key_backbone(x2)), dim=1)
    torch.testing.assert_close(moco.queue[rank * n : (rank + 1) * n], mine)
    queues = [torch.empty_like(moco.queue) for _ in range(WORLD)]
    dist.all_gather(queues, moco.queue)
    assert torch.equal(queues[0], queues[1]) and int(moco.queue_ptr) == WORLD * n

    # symmetric, with batch norm: under DDP each rank is one BN group per view (bn_splits applies to one process)
    sym = MoCo(build_backbone("small"), 256, 8, queue_size=16, proj_dim=4, symmetric=True, bn_splits=8)
    for encoder in (sym.backbone, sym.key_backbone):
        assert {m.num_splits for m in encoder.modules() if isinstance(m, SplitBatchNorm2d)} == {2}
    sym.training_step(batch).backward()
    sym.after_step(0.1)
    assert int(sym.queue_ptr) == 2 * WORLD * n


def test_moco_queue_gets_every_ranks_keys_and_shuffle_is_global():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    run_ranks(_moco_rank, WORLD, images)
