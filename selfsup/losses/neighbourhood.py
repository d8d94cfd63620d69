"""AND's neighbourhood-aware non-parametric loss (Huang, Dong, Gong, Zhu, "Unsupervised Deep Learning by
Neighbourhood Discovery", ICML 2019, section 3.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.base import full_precision


@full_precision
def neighbourhood_softmax(features: torch.Tensor, memory: torch.Tensor, targets: torch.Tensor,
                          neighbours: torch.Tensor, selected: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """p_ij = exp(m_j . v_i / T) / sum_l exp(m_l . v_i / T) over the whole memory ``memory`` (M, D) (NPID's
    non-parametric softmax); sample ``b`` (its own row ``targets[b]``) loses -log(p_ii + sum_{j in N(i)} p_ij) if
    ``selected[b]``, its anchor neighbourhood ``neighbours[b]`` (k rows, not its own) sharing its class, else the
    instance term -log p_ii. ``features`` are L2-normalised here; no gradient flows into the memory. Returns the
    mean over the batch."""
    v = F.normalize(features.float(), dim=1)
    logits = v @ memory.detach().float().T / temperature
    members = torch.cat([targets[:, None], neighbours], dim=1)
    counted = torch.cat([torch.ones_like(selected)[:, None], selected[:, None].expand_as(neighbours)], dim=1)
    inside = logits.gather(1, members).masked_fill(~counted, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(inside, dim=1)).mean()
