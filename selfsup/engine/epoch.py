"""What a method's ``on_epoch_start`` may do with the whole pretraining set (selfsup.methods.base.EpochContext):
sharded extraction gathered on every rank, work done once on rank 0 and broadcast, a seeded generator, the
epoch's sampling weights, and forgetting optimiser state of re-initialised modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from selfsup.distributed import broadcast_object, gather_rows, is_main_process, rank, world_size
from selfsup.errors import UserError


class Epoch:
    """The engine's :class:`~selfsup.methods.base.EpochContext` for one epoch."""

    def __init__(self, epoch: int, images: Any, method: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                 device: torch.device, seed: int, fields: dict[str, torch.Tensor] | None = None) -> None:
        from selfsup.engine.batches import seed_for

        self.epoch, self.images, self.device, self.fields = epoch, images, device, fields or {}
        self.num_samples = len(images)
        self.streamed = not isinstance(images, torch.Tensor)
        self.generator = torch.Generator().manual_seed(seed_for("epoch", seed, epoch))
        self.weights: torch.Tensor | None = None
        self._method, self._optimizers = method, optimizers

    @torch.no_grad()
    def extract(self, fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 512,
                sharded: bool = True) -> torch.Tensor:
        """``fn`` on uint8 chunks of the whole set, gathered in order on every rank (float32, on the CPU); every
        batch-norm buffer is restored afterwards, whatever mode ``fn`` runs in.

        ``sharded``: each rank runs ``fn`` on its share, so ``fn`` must not communicate (batch norm in eval
        mode, as feature extraction usually runs). ``sharded=False``: every rank runs ``fn`` over the whole set
        in the same chunks, in step, e.g. batch norm in training mode over the global batch."""
        from selfsup.data.stream import ShardImages

        if isinstance(self.images, ShardImages):
            raise UserError("this method passes over the whole data set every epoch, which tar shards do not "
                            "allow (they only stream); train on the image folder instead")
        n = self.num_samples
        share = -(-n // world_size()) if sharded else n
        first, last = (rank() * share, min(n, (rank() + 1) * share)) if sharded else (0, n)
        buffers = [b for m in self._method.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                   for b in m.buffers()]
        saved = [b.clone() for b in buffers]
        try:
            parts = [fn(self.images[s : min(s + batch_size, last)].to(self.device, non_blocking=True)).float().cpu()
                     for s in range(first, last, batch_size)]
        finally:
            for b, s in zip(buffers, saved, strict=True):
                b.copy_(s)
        if not parts:  # more ranks than images: one row for the width, none kept
            parts = [fn(self.images[:1].to(self.device)).float().cpu()[:0]]
        rows = torch.cat(parts)
        return gather_rows(rows, share, n, self.device) if sharded else rows

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0, its result (tensors or containers of them, moved to the CPU) sent to every rank."""
        return broadcast_object(fn() if is_main_process() else None)

    def set_sampling_weights(self, weights: torch.Tensor) -> None:
        if weights.shape != (self.num_samples,) or not bool((weights >= 0).all()) or not float(weights.sum()) > 0:
            raise ValueError(f"sampling weights must be {self.num_samples} non-negative values, not all zero")
        self.weights = weights.detach().double().cpu()

    def reset_optimizer_state(self, module: nn.Module) -> None:
        for opt in self._optimizers.values():
            for p in module.parameters():
                opt.state.pop(p, None)
