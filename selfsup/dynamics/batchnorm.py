"""Keeping batch norm from leaking which samples belong together (He et al., MoCo, CVPR 2020, section 3.3).

BN statistics computed over a batch let a contrastive model "cheat": a query and its key, normalised with
the statistics of the same set of images, can match through those statistics instead of through content.
MoCo's two remedies live here:

- :class:`SplitBatchNorm2d` normalises a batch in ``num_splits`` contiguous sub-batches, as a run on
  ``num_splits`` GPUs would, so one device behaves like a multi-GPU run;
- :func:`batch_shuffle` / :func:`batch_unshuffle` feed the key encoder a shuffled batch (across all ranks
  under torch.distributed), so a key's BN sub-batch is not its query's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from selfsup.distributed import gather, is_distributed, rank, world_size


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises each of ``num_splits`` contiguous sub-batches with its own
    statistics; running statistics are the mean of the sub-batches' updates. In eval mode it is BatchNorm2d.

    Same parameters and buffers as ``nn.BatchNorm2d``, so state dicts are interchangeable.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1 (got {num_splits})")
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.num_splits
        if not self.training or g == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % g:
            raise ValueError(f"split batch norm: a batch of {n} does not split into {g} equal sub-batches; "
                             f"use a batch size divisible by {g} (the method's bn_splits option)")
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        # sub-batch k = samples [k*n/g, (k+1)*n/g) becomes channel block k of one (n/g, g*c) batch
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        if channels_last:  # regroup whole pixels in the (n, h, w, c) storage; the output stays channels-last
            grouped = x.view(g, n // g, c, h, w).permute(1, 3, 4, 0, 2).reshape(n // g, h, w, g * c).permute(0, 3, 1, 2)
        else:
            grouped = x.reshape(g, n // g, c, h, w).transpose(0, 1).reshape(n // g, g * c, h, w)
        track = self.track_running_stats
        stats = [s.repeat(g) for s in (self.running_mean, self.running_var)] if track else [None, None]
        affine = [None if p is None else p.repeat(g) for p in (self.weight, self.bias)]
        out = F.batch_norm(grouped, stats[0], stats[1], affine[0], affine[1], True, momentum, self.eps)
        if track:
            self.running_mean.copy_(stats[0].view(g, c).mean(0))
            self.running_var.copy_(stats[1].view(g, c).mean(0))
        if channels_last:
            return out.view(n // g, g, c, h, w).permute(1, 0, 3, 4, 2).reshape(n, h, w, c).permute(0, 3, 1, 2)
        return out.reshape(n // g, g, c, h, w).transpose(0, 1).reshape(n, c, h, w)

    @classmethod
    def convert(cls, module: nn.Module, num_splits: int) -> nn.Module:
        """Replace every ``nn.BatchNorm2d`` in ``module`` (in place; returned) by a SplitBatchNorm2d with the
        same parameters and buffers, as ``nn.SyncBatchNorm.convert_sync_batchnorm`` does."""
        if isinstance(module, nn.BatchNorm2d) and not isinstance(module, cls):
            new = cls(module.num_features, num_splits, eps=module.eps, momentum=module.momentum,
                      affine=module.affine, track_running_stats=module.track_running_stats)
            if module.affine:
                new.weight, new.bias = module.weight, module.bias
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
            return new.train(module.training)
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child, num_splits))
        return module


@torch.no_grad()
def batch_shuffle(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle a batch over all ranks: returns this rank's share of the shuffled global batch and the index
    that :func:`batch_unshuffle` needs. In one process it is a random permutation of the batch.

    Under torch.distributed every rank gathers the global batch, rank 0's permutation (from ``generator``)
    is broadcast, and each rank keeps its slice of the permuted batch (MoCo's ``_batch_shuffle_ddp``).
    """
    xs = gather(x)
    perm = torch.randperm(xs.shape[0], generator=generator,
                          device=generator.device if generator is not None else None).to(x.device)
    if is_distributed():
        dist.broadcast(perm, 0)
    mine = perm.view(world_size(), -1)[rank()]
    return xs[mine], torch.argsort(perm)


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
    """Undo :func:`batch_shuffle` on (a function of) its output: this rank's samples back in their order."""
    xs = gather(x)
    return xs[unshuffle.view(world_size(), -1)[rank()]]
