"""A ring-buffer queue of keys (MoCo's dictionary, He et al., CVPR 2020)."""

from __future__ import annotations

import torch

from selfsup.errors import UserError


@torch.no_grad()
def enqueue(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """Overwrite the oldest ``len(keys)`` rows of the ring buffer ``queue`` with ``keys`` and advance ``ptr``
    (MoCo's ``_dequeue_and_enqueue``). The queue size must be a multiple of ``len(keys)``."""
    size, n = queue.shape[0], keys.shape[0]
    if size % n:
        raise UserError(f"moco: the queue size {size} must be divisible by the number of keys enqueued per "
                        f"step ({n} = the global batch, twice that with symmetric=true); change queue_size")
    rows = torch.arange(n, device=queue.device).add_(ptr).remainder_(size)  # on the device: no host sync
    queue.index_copy_(0, rows, keys.to(queue.dtype))
    ptr.add_(n).remainder_(size)
