"""Cross-entropy against soft targets: a distribution per sample rather than one class (BoWNet's bag-of-words
targets, Gidaris et al., CVPR 2020; CutMix's mixed labels, Yun et al., ICCV 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.base import full_precision


@full_precision
def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean over samples of -sum_k y_k log softmax(logits)_k`` for logits and targets ``(B, K)``; no gradient
    flows into the targets."""
    return -(targets.detach().float() * F.log_softmax(logits.float(), dim=1)).sum(1).mean()
