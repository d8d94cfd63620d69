"""Optimisers (SGD, LARS, Adam, AdamW), their settings as a method declares and a config overrides them, and the
learning-rate schedules."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from selfsup.errors import UserError


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


def param_groups(params: list[nn.Parameter], weight_decay: float, norm_bias_lr_scale: float = 1.0) -> list[dict]:
    """Weight decay (and LARS adaptation) on weights only; biases and norm parameters are exempt and step at
    ``norm_bias_lr_scale`` times the scheduled rate (``lr_scale``; Barlow Twins' paper: 0.0048 / 0.2)."""
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay, lr_scale=1.0),
            dict(params=no_decay, weight_decay=0.0, lars=False, lr_scale=norm_bias_lr_scale)]


@dataclass
class OptimizerSettings:
    """One optimiser's resolved settings (the config keys of :data:`selfsup.config.OPTIMIZER_FIELDS`)."""

    optimizer: str
    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    lars_eta: float = 0.001
    lars_clip: bool = False
    norm_bias_lr_scale: float = 1.0
    schedule: str = "cosine"
    warmup_epochs: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def resolve_optimizers(method_cls: type, top: dict[str, Any], named: dict[str, dict[str, Any]],
                       batch_size: int) -> dict[str, OptimizerSettings]:
    """Every optimiser of ``method_cls`` with its settings: the method's defaults (``optimizer_defaults``,
    and for the first optimiser its class attributes ``optimizer``, ``base_lr`` x batch/256 and
    ``weight_decay``), overridden by the config: ``top`` (the top-level keys) for the first optimiser,
    ``named[name]`` for the others. ``None`` values mean "the default"."""
    names = list(method_cls.optimizer_defaults)
    unknown = sorted(set(named) - set(names[1:]))
    if unknown:
        first = f"; '{names[0]}' is set by the top-level keys (lr, optimizer, ...)" if names[0] in unknown else ""
        raise UserError(f"method {method_cls.name} has no optimiser {', '.join(map(repr, unknown))} under "
                        f"optimizers (its others: {', '.join(names[1:]) or 'none'}){first}")
    out = {}
    for i, name in enumerate(names):
        values: dict[str, Any] = {}
        if i == 0:
            values.update(optimizer=method_cls.optimizer, lr=method_cls.base_lr * batch_size / 256,
                          weight_decay=method_cls.weight_decay)
        values.update(method_cls.optimizer_defaults[name])
        values.update({k: v for k, v in (top if i == 0 else named.get(name, {})).items() if v is not None})
        if "lr" not in values:
            raise UserError(f"method {method_cls.name} gives optimiser '{name}' no lr; set optimizers.{name}.lr")
        values["betas"] = tuple(values.get("betas", (0.9, 0.999)))
        out[name] = OptimizerSettings(**values)
    return out


def build_optimizer(params: list[nn.Parameter], s: OptimizerSettings, fused: bool = False) -> torch.optim.Optimizer:
    """SGD, LARS, Adam or AdamW over :func:`param_groups`; set each group's rate as ``lr * group["lr_scale"]``.

    ``fused``: torch's fused CUDA kernels (SGD, Adam, AdamW)."""
    groups = param_groups(params, s.weight_decay, s.norm_bias_lr_scale)
    if s.optimizer == "lars":
        return LARS(groups, lr=s.lr, momentum=s.momentum, trust_coefficient=s.lars_eta, clip=s.lars_clip)
    for g in groups:
        g.pop("lars", None)
    if s.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, fused=fused or None)
    cls = torch.optim.Adam if s.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=s.lr, betas=s.betas, fused=fused or None)


def lr_at(step: int, total: int, base_lr: float, warmup: int, schedule: str = "cosine") -> float:
    """Linear warmup for ``warmup`` steps, then cosine decay to 0 at ``total`` (or ``base_lr`` throughout)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))
