"""One training step: every phase a method declares, each a forward/backward/optimiser step under the same
autocast, learning-rate schedule and gradient reduction across ranks, with its loss terms kept for the log."""

from __future__ import annotations

import contextlib
import functools
import operator
from dataclasses import replace

import torch
from torch import nn
from torch.profiler import record_function

from selfsup.distributed import reduce_gradients
from selfsup.engine.optim import OptimizerSettings, lr_at
from selfsup.errors import UserError
from selfsup.methods import Batch, Method


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for the training step on CUDA, nothing on CPU (evaluation always runs in float32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _total(out: torch.Tensor | dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A step's output as (the loss to minimise, its named terms): a dict's terms are summed."""
    if isinstance(out, torch.Tensor):
        return out, {}
    if not out:
        raise ValueError("training_step returned an empty dict of loss terms")
    return functools.reduce(operator.add, out.values()), out


class Stepper:
    """Runs the phases of a step (``method.phases``: the optimiser each one steps) and sets every optimiser's
    scheduled rate. One phase: ``model`` (the method, or its DistributedDataParallel wrapper, which reduces
    gradients during backward) runs it. Several: the method runs each phase with the other optimisers'
    parameters frozen, and the phase's gradients are averaged over ranks before its optimiser steps."""

    def __init__(self, method: Method, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                 settings: dict[str, OptimizerSettings], params: dict[str, list[nn.Parameter]], total: int,
                 per_epoch: int, device: torch.device) -> None:
        if not method.phases:
            raise UserError(f"method {method.name} has no phase to run (a step needs at least one)")
        unknown = sorted(set(method.phases) - set(optimizers))
        if unknown:
            raise ValueError(f"{method.name}: phases name optimisers it does not declare: {unknown}")
        self.method, self.model, self.optimizers, self.settings = method, model, optimizers, settings
        self.params, self.total, self.device = params, total, device
        self.warmup = {n: min(int(s.warmup_epochs * per_epoch), total // 10) for n, s in settings.items()}
        self.multi = len(method.phases) > 1

    def set_rates(self, step: int) -> dict[str, float]:
        """Every optimiser's rate at ``step`` (warmup, then its schedule), set on its parameter groups."""
        rates = {}
        for name, opt in self.optimizers.items():
            s = self.settings[name]
            rates[name] = lr = lr_at(step, self.total, s.lr, self.warmup[name], s.schedule)
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # checkpoints before lr_scale have none
        return rates

    def run(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The step's phases; returns its logged values (``loss`` and named terms), detached, on the device."""
        if not self.multi:
            loss, terms = self._phase(self.model, batch, self.method.phases[0])
            return {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}
        totals: dict[str, list[torch.Tensor]] = {}
        values: dict[str, list[torch.Tensor]] = {}
        for i, name in enumerate(self.method.phases):
            with self._frozen(name):
                loss, terms = self._phase(self.method, replace(batch, phase=i), name)
            totals.setdefault(name, []).append(loss.detach())
            for k, v in terms.items():
                values.setdefault(f"{name}/{k}", []).append(v.detach())
        means = {name: functools.reduce(operator.add, vs) / len(vs) for name, vs in totals.items()}
        return {"loss": functools.reduce(operator.add, means.values()), **means,
                **{k: functools.reduce(operator.add, vs) / len(vs) for k, vs in values.items()}}

    def _phase(self, model: nn.Module, batch: Batch, name: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        opt = self.optimizers[name]
        with autocast(self.device), record_function("forward"):  # views, backbone, heads, loss
            loss, terms = _total(model(batch))
        opt.zero_grad(set_to_none=True)
        with record_function("backward"):
            loss.backward()
        if self.multi:
            reduce_gradients(self.params[name])
        with record_function("optimizer"):
            opt.step()
        return loss, terms

    @contextlib.contextmanager
    def _frozen(self, name: str):
        """The other optimisers' parameters without gradients while phase ``name`` runs (no wasted backward)."""
        others = [p for n, ps in self.params.items() if n != name for p in ps]
        for p in others:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in others:
                p.requires_grad_(True)
