"""A memory bank of one normalised feature per training image (Wu et al., NPID, CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bank_update(rows: torch.Tensor, features: torch.Tensor, momentum: float = 0.5) -> torch.Tensor:
    """NPID's memory update (section 3.2): v_i <- normalise(momentum * v_i + (1 - momentum) * f_i)."""
    return F.normalize(momentum * rows + (1 - momentum) * F.normalize(features.float(), dim=1), dim=1)


class PendingRows:
    """The rows a step wrote into a memory bank, held until the optimiser has stepped (``after_step``): the batch's
    indices and features of every rank, so that each process's bank stays the same."""

    def __init__(self) -> None:
        self.rows: tuple[torch.Tensor, torch.Tensor] | None = None

    def hold(self, indices: torch.Tensor, features: torch.Tensor) -> None:
        self.rows = (indices, features)

    @torch.no_grad()
    def write(self, bank: torch.Tensor, momentum: float) -> None:
        """:func:`bank_update` of the held rows of ``bank``, in place; nothing when none are held."""
        if self.rows is not None:
            idx, features = self.rows
            bank[idx] = bank_update(bank[idx], features, momentum)
            self.rows = None


def sampled_negatives(bank: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor | None:
    """``count`` rows of ``bank`` drawn uniformly with replacement (one set shared by the batch; NPID's noise
    samples), or None where ``count`` is 0 or at least the bank's size: the whole bank."""
    if count <= 0 or count >= len(bank):
        return None
    picks = torch.randint(len(bank), (count,), generator=generator, device=generator.device)
    return bank[picks.to(bank.device)]
