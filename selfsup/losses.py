"""Loss functions: pure functions of tensors with no hidden state.

Losses that mix samples across the batch gather the other ranks' embeddings with gradient when
torch.distributed is initialised (:func:`selfsup.engine.distributed.gather_with_grad`); in a
single process the gather is the identity and costs nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.engine.distributed import gather_with_grad, rank


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., ICML 2020).

    ``z1[i]`` and ``z2[i]`` are two views of sample ``i``. Every one of the 2N views is an anchor
    whose positive is its pair and whose negatives are the other 2N - 2 views (of all ranks).
    Returns the mean over the 2N anchors.
    """
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    local = torch.cat([z1, z2])
    everyone = torch.cat([gather_with_grad(z1), gather_with_grad(z2)])
    n, total = z1.shape[0], everyone.shape[0] // 2
    logits = local @ everyone.T / temperature
    idx = torch.arange(n, device=z1.device) + rank() * n
    anchors = torch.cat([idx, idx + total])  # each local anchor's own column
    positives = torch.cat([idx + total, idx])
    logits[torch.arange(2 * n, device=z1.device), anchors] = float("-inf")
    return F.cross_entropy(logits, positives)


def byol_regression(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's loss 2 - 2 cos(p, z) with no gradient into the target ``z`` (Grill et al., NeurIPS 2020)."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)).mean()
