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
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(t_params, o_params, 1 - tau)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)
