"""Contrastive losses between two views that go through two different encoders (Tian, Krishnan, Isola, "Contrastive
Multiview Coding", ECCV 2020). Runs in float32 even inside a bf16 autocast region (:mod:`.base`); the other ranks'
embeddings are gathered with gradient under torch.distributed (:func:`selfsup.distributed.gather_with_grad`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.distributed import gather_with_grad
from selfsup.losses.base import full_precision
from selfsup.losses.contrastive import _global_index


@full_precision
def cross_view_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.07) -> tuple[torch.Tensor, torch.Tensor]:
    """CMC's two-view objective with in-batch negatives (eqs. 2-3): ``z1[i]`` and ``z2[i]`` are view 1 and view 2 of
    sample ``i``; h(u, v) = exp(cos(u, v) / T). Returns both directions, each the mean over this rank's anchors:

    - view 1 anchors: -log h(z1_i, z2_i) / sum_j h(z1_i, z2_j), over the view-2 embeddings z2_j of the global batch;
    - view 2 anchors: -log h(z2_i, z1_i) / sum_j h(z2_i, z1_j).

    Their sum is the paper's L(V1, V2) = L_contrast^{V1,V2} + L_contrast^{V2,V1}. Gradients reach both views' encoders
    through anchors and candidates alike.
    """
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    own = _global_index(z1.shape[0], z1.device)
    return (F.cross_entropy(z1 @ gather_with_grad(z2).T / temperature, own),
            F.cross_entropy(z2 @ gather_with_grad(z1).T / temperature, own))
