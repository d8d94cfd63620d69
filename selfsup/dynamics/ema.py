"""Exponential moving averages of a network (BYOL's target, MoCo's key encoder)."""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_tau(base: float, progress: float) -> float:
    """BYOL's schedule: tau = 1 - (1 - base) * (cos(pi * progress) + 1) / 2, from base to 1."""
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- tau * target + (1 - tau) * online for parameters; buffers (BN statistics) are copied."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), 1 - tau)  # no_grad: no detach
    buffers = list(target.buffers())
    if buffers:  # multi-tensor copy: a few kernel launches instead of one per buffer
        torch._foreach_copy_(buffers, list(online.buffers()))
