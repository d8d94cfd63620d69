"""JULE's weighted triplet loss over cluster pseudo-labels (Yang, Parikh, Batra, "Joint Unsupervised Learning of Deep
Representations and Image Clusters", CVPR 2016, section 3.3): the backward pass of its recurrent framework."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.distributed import gather, gather_with_grad, rank, world_size
from selfsup.losses.base import full_precision


def cluster_negatives(clusters: torch.Tensor, count: int, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """For every sample of a batch with cluster ids ``clusters`` (B,), ``count`` distinct samples of the batch from
    other clusters, drawn uniformly (the ``count`` smallest of uniform keys drawn from ``generator`` on its device);
    all of them where there are fewer, or for ``count=0``. Returns ``(indices (B, c), valid (B, c))``, c = B for
    ``count=0`` else min(count, B); ``valid`` marks the drawn ones (the rest are samples of the same cluster)."""
    b = len(clusters)
    device = generator.device if generator is not None else clusters.device
    keys = torch.rand(b, b, generator=generator, device=device).to(clusters.device)
    keys = keys.masked_fill(clusters[:, None] == clusters[None], 2.0)
    smallest = keys.topk(b if count == 0 else min(count, b), dim=1, largest=False)
    return smallest.indices, smallest.values < 2.0


@full_precision
def weighted_triplet_loss(z: torch.Tensor, clusters: torch.Tensor, gamma: float = 2.0, margin: float = 0.2,
                          negatives: int = 20, generator: torch.Generator | None = None) -> torch.Tensor:
    """JULE's weighted triplet loss: the mean of max(0, gamma |a - p|^2 - |a - n|^2 + margin) over the triplets of the
    global batch, on L2-normalised embeddings ``z`` (B, D) of samples with cluster ids ``clusters`` (B,).

    Every ordered pair of two samples of one cluster is an anchor a and a positive p; the anchor's negatives n are
    ``negatives`` samples of other clusters (:func:`cluster_negatives`, drawn for the global batch with
    ``generator``; 0: every one). gamma weighs the positive pairs: the merge criterion written as a sum of triplet
    terms gives gamma = 1 + 1/lambda, 2 for the paper's lambda = 1; the squared distances and the margin are the
    authors' code's (margin 0.2). Under torch.distributed each rank sums its anchors' terms, scaled so that the mean
    over ranks is the global mean. Zero (with a graph) when the global batch holds no triplet.
    """
    z = F.normalize(z.float(), dim=1)
    everyone, ids = gather_with_grad(z), gather(clusters)
    total, n = len(ids), len(z)
    own = torch.arange(n, device=z.device) + rank() * n
    picked, valid = cluster_negatives(ids, negatives, generator)
    same = ids[:, None] == ids[None]
    count = ((same.sum(1) - 1) * valid.sum(1)).sum().clamp(min=1)  # the global batch's triplets
    dist = (2 - 2 * z @ everyone.T).clamp(min=0)  # squared distances of unit vectors
    positive = same[own] & (own[:, None] != torch.arange(total, device=z.device))
    terms = F.relu(gamma * dist[:, :, None] - dist.gather(1, picked[own])[:, None, :] + margin)
    return (terms * (positive[:, :, None] & valid[own][:, None, :])).sum() * world_size() / count
