"""A memory bank of one normalised feature per training image (Wu et al., NPID, CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bank_update(rows: torch.Tensor, features: torch.Tensor, momentum: float = 0.5) -> torch.Tensor:
    """NPID's memory update (section 3.2): v_i <- normalise(momentum * v_i + (1 - momentum) * f_i)."""
    return F.normalize(momentum * rows + (1 - momentum) * F.normalize(features.float(), dim=1), dim=1)
