"""Contrastive Predictive Coding's InfoNCE over a grid of patch vectors (van den Oord, Li, Vinyals, "Representation
Learning with Contrastive Predictive Coding", arXiv 2018, eq. 4; Hénaff et al., "Data-Efficient Image Recognition
with Contrastive Predictive Coding", ICML 2020, eq. 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.distributed import gather_with_grad, rank
from selfsup.losses.base import full_precision


@full_precision
def cpc_loss(z: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """CPC's InfoNCE: ``z`` ``(B, C, G, G)`` holds every image's patch vectors, ``predictions`` ``(B, K, C, G, G)``
    the predictions ``W_k c[i, j]`` made at every position for the offsets ``k = 1 .. K``. Prediction ``(b, k, i,
    j)`` with ``i + k < G`` must pick its target ``z[b, :, i + k, j]`` among the patch vectors of every position
    of every image of the batch (of all ranks, gathered with gradient; the other ones are the negatives):
    ``-log softmax_l(p . z_l)`` at the target, with unnormalised dot products (the log-bilinear score ``exp(z^T
    W_k c)``). Returns the mean over offsets of each offset's mean over its predictions (the paper's sum over
    ``i, j, k``, each offset weighted alike)."""
    batch, channels, grid, _ = z.shape
    steps = predictions.shape[1]
    keys = gather_with_grad(z.float().permute(0, 2, 3, 1).reshape(-1, channels))  # row ((b * G) + i) * G + j
    images = (torch.arange(batch, device=z.device) + rank() * batch).view(-1, 1, 1)
    cols = torch.arange(grid, device=z.device).view(1, 1, -1)
    losses = []
    for k in range(1, steps + 1):
        queries = predictions[:, k - 1, :, : grid - k].float().permute(0, 2, 3, 1).reshape(-1, channels)
        rows = torch.arange(k, grid, device=z.device).view(1, -1, 1)
        losses.append(F.cross_entropy(queries @ keys.T, ((images * grid + rows) * grid + cols).flatten()))
    return torch.stack(losses).mean()
