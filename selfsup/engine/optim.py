"""Optimisers and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al., 2017), as SimCLR/BYOL use it.

    Parameters in groups with ``lars=False`` get plain SGD (``param_groups`` puts biases and norms
    there, without weight decay). ``clip=True`` is solo-learn's variant for short CIFAR schedules (used
    with ``trust_coefficient=0.02``): a parameter's step size is ``min(eta |p| / |d|, lr)`` rather than
    ``lr * eta |p| / |d|``, so the schedule only caps the adaptive rate.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, clip: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, clip=clip, lars=True))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One update of every parameter with a handful of multi-tensor (``torch._foreach``) kernels per
        group, not a dozen small kernels per parameter: on a GPU the step is bound by kernel launches.

        Per parameter: d = g + wd * p; on LARS groups d *= r with r = eta |p| / |d| (1 where either
        norm is 0), or with ``clip`` r = min(eta |p| / |d| / lr, 1); buf = momentum * buf + d (buf = d at
        the first step); p -= lr * buf. ``d`` is built in place of
        the gradient (no second copy of the model per step), so after ``step`` the ``.grad`` tensors hold
        the scaled update; the trainer clears them before the next backward anyway.
        """
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            d = [p.grad for p in params]
            wd = group["weight_decay"]
            if wd:
                torch._foreach_add_(d, params, alpha=wd)
            if group["lars"]:
                pn, dn = torch.stack(torch._foreach_norm(params)), torch.stack(torch._foreach_norm(d))
                ratio = torch.where((pn > 0) & (dn > 0), group["trust_coefficient"] * pn / dn, 1.0)
                if group.get("clip", False) and group["lr"] > 0:  # checkpoints before clip have none
                    ratio = (ratio / group["lr"]).clamp_(max=1.0)
                torch._foreach_mul_(d, list(ratio.to(d[0].dtype).unbind()))
            states = [self.state[p] for p in params]
            if all("momentum_buffer" in s for s in states):
                bufs = [s["momentum_buffer"] for s in states]
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, d)
            else:  # first step
                bufs = [b.clone() for b in d]
                for s, b in zip(states, bufs):
                    s["momentum_buffer"] = b
            torch._foreach_add_(params, bufs, alpha=-group["lr"])


def param_groups(model: nn.Module, weight_decay: float, norm_bias_lr_scale: float = 1.0) -> list[dict]:
    """Weight decay (and LARS adaptation) on weights only; biases and norm parameters are exempt and step at
    ``norm_bias_lr_scale`` times the scheduled rate (``lr_scale``; Barlow Twins' paper: 0.0048 / 0.2)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay, lr_scale=1.0),
            dict(params=no_decay, weight_decay=0.0, lars=False, lr_scale=norm_bias_lr_scale)]


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float,
                    fused: bool = False, lars_eta: float = 0.001, lars_clip: bool = False,
                    norm_bias_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """SGD or LARS over :func:`param_groups`; set each group's rate as ``lr * group.get("lr_scale", 1)``."""
    groups = param_groups(model, weight_decay, norm_bias_lr_scale)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, trust_coefficient=lars_eta, clip=lars_clip)
    for g in groups:
        g.pop("lars", None)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, fused=fused or None)


def lr_at(step: int, total: int, base_lr: float, warmup: int) -> float:
    """Linear warmup for ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))
