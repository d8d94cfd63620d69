"""AND's anchor neighbourhoods and their curriculum, computed from a memory bank (Huang, Dong, Gong, Zhu,
"Unsupervised Deep Learning by Neighbourhood Discovery", ICML 2019, section 3)."""

from __future__ import annotations

import torch

from selfsup.losses.base import full_precision

#: the most similarities a chunk of bank rows holds at once (128 MiB in float32)
CHUNK_ELEMENTS = 2**25


@full_precision
def bank_neighbourhoods(bank: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Every bank row's anchor neighbourhood, its ``k`` most similar other rows ``(N, k)`` by cosine similarity (the
    rows are unit vectors; most similar first), and the entropy ``(N,)`` of its non-parametric softmax over the whole
    bank, itself included: H_i = -sum_j p_ij log p_ij with p_ij = softmax_j(v_i . v_j / T), the paper's selection
    measure (a low entropy: a confident anchor, whose neighbourhood is likely of one class). Rows in chunks of at
    most :data:`CHUNK_ELEMENTS` similarities, on the bank's device."""
    bank = bank.float()
    n = len(bank)
    step = max(1, CHUNK_ELEMENTS // n)
    neighbours, entropy = [], []
    for first in range(0, n, step):
        sims = bank[first : first + step] @ bank.T
        log_p = torch.log_softmax(sims / temperature, dim=1)
        entropy.append(-(log_p.exp() * log_p).sum(1))
        rows = torch.arange(len(sims), device=bank.device)
        sims[rows, rows + first] = float("-inf")  # not its own neighbour
        neighbours.append(sims.topk(k, dim=1).indices)
    return torch.cat(neighbours), torch.cat(entropy)


def lowest(values: torch.Tensor, count: int) -> torch.Tensor:
    """A mask ``(N,)`` of the ``count`` smallest values; equal values in index order (a stable sort)."""
    mask = torch.zeros(len(values), dtype=torch.bool, device=values.device)
    mask[torch.sort(values, stable=True).indices[:count]] = True
    return mask


def curriculum_round(progress: float, rounds: int) -> int:
    """The round (0 .. ``rounds``) at a point ``progress`` in [0, 1) of a run cut into ``rounds`` + 1 equal shares:
    round 0 is instance discrimination, round r selects r / ``rounds`` of the anchors (the paper's curriculum:
    R = 4 rounds after the first, 25% more anchors each). A round begins at the first epoch past its share's start."""
    return min(rounds, int(progress * (rounds + 1) + 1e-9))
