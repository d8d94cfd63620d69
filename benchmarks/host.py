"""The host side of a training step on the GPU code path, measured on the CPU (``host``): ATen ops per phase of a
step, the views' host time, every CIFAR-10 recipe's ops per step, and what a checkpoint costs the step loop."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import selfsup
import selfsup.data.augment
import selfsup.data.ops.base
import selfsup.data.ops.color
from benchmarks.common import ROOT, environment, median, save
from benchmarks.tables import load
from selfsup.config import config_from_dict, load_config
from selfsup.data.sources import Dataset, ImageSet
from selfsup.data.views import augmented_views
from selfsup.engine.build import build_method, optimizer_settings, resolve_config
from selfsup.engine.checkpoint import CheckpointWriter, save_checkpoint
from selfsup.engine.optim import build_optimizer
from selfsup.methods import Batch, Method

#: the recipes (recipes/cifar10/<name>.yaml) whose ops per step are counted and tracked by commit
HOST_RECIPES = ("simclr", "moco", "byol", "barlow", "supcon")


class _OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched while active (what the host pays for, once per op and kernel launch)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def method_and_optimizer(cfg: selfsup.TrainConfig, channels_last: bool = False) -> tuple[Method, torch.optim.Optimizer]:
    """The method of ``cfg`` for 32 px images of 10 classes and its first optimiser, resolved as the trainer
    resolves them (the config's optimiser settings over the method's defaults) and fused, as on a GPU."""
    cfg = resolve_config(cfg, Dataset("host", pretrain=ImageSet(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))))
    method = build_method(cfg, 32, 10)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    name, settings = next(iter(optimizer_settings(cfg).items()))
    return method, build_optimizer([p for p in method.parameters_of(name) if p.requires_grad], settings, fused=True)


def step_ops(method: Method, opt: torch.optim.Optimizer, batch: Batch) -> dict[str, int]:
    """ATen ops of one training step of a single-phase method whose step returns one loss tensor: forward (views
    included), backward, optimiser step + after_step (the sequence of the engine's Stepper and trainer, counted
    phase by phase)."""
    with _OpCounter() as c:
        loss = method.training_step(batch)
    ops = {"forward": c.n}
    with _OpCounter() as c:
        loss.backward()
    ops["backward"] = c.n
    with _OpCounter() as c:
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step(0.5)
    ops["optimizer_and_after_step"] = c.n
    return ops


def recipe_ops(name: str, images: torch.Tensor) -> dict[str, int]:
    """ATen ops of one training step of ``recipes/cifar10/<name>.yaml`` (its method, options and optimiser) on the
    GPU code path, channels-last as on a GPU: forward (views included), backward, optimiser step + after_step."""
    cfg = config_from_dict({**load_config(ROOT / f"recipes/cifar10/{name}.yaml"), "batch_size": len(images)})
    method, opt = method_and_optimizer(cfg, channels_last=True)
    labels = torch.arange(len(images)) % 10
    for i in range(2):  # the second step is the steady state (first-step state is built in the first)
        ops = step_ops(method, opt, Batch(images, labels, torch.arange(len(images)), torch.Generator().manual_seed(i),
                                          0.0))
    return ops


def checkpoint_cost(method: torch.nn.Module, opt: torch.optim.Optimizer, repeats: int) -> dict:
    """Milliseconds the training thread spends per checkpoint of ``method`` and ``opt`` (median of
    ``repeats``): writing it itself (save_checkpoint) against handing it to the background writer."""
    payload = lambda: dict(state=method.state_dict(), optimizer=opt.state_dict())  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        path, writer = Path(tmp) / "checkpoint.pt", CheckpointWriter()
        sync, background = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            save_checkpoint(path, payload())
            sync.append(time.perf_counter() - start)
            writer.wait()
            start = time.perf_counter()
            writer.save(path, payload())
            background.append(time.perf_counter() - start)
            writer.wait()
        megabytes = path.stat().st_size / 1e6
    return dict(megabytes=round(megabytes), synchronous=round(1e3 * median(sync)),
                background_writer=round(1e3 * median(background)),
                note="the first background save allocates its buffers; later ones reuse them")


def host(args: argparse.Namespace) -> None:
    """The host side of one SimCLR ResNet-18 step on the GPU code path, measured on the CPU.

    On a GPU the step of ResNet-18 on CIFAR is bound by the host when the host cannot issue kernels as fast
    as the GPU runs them (benchmarks/results/gpu.json: 21 ms of kernels, ~28 ms per step). Each ATen op
    dispatched is host work paid once per kernel launch, so this counts the ops of each phase of a step
    (views, backbone + head + loss, backward, optimiser) with the masked augmentation ops on their dense
    GPU path, and times the views on a batch of 8 (one thread), small enough that per-op overhead, not
    arithmetic, is what the clock sees.
    """
    for module in (selfsup.data.augment, selfsup.data.ops.base, selfsup.data.ops.color):
        module.accelerated = lambda t: True  # the GPU's code path
    torch.set_num_threads(1)
    cfg = selfsup.TrainConfig(method="simclr", data="cifar10", backbone="resnet18", batch_size=args.batch_size)
    method, opt = method_and_optimizer(cfg)
    images = torch.randint(0, 256, (args.batch_size, 3, 32, 32), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    batch = Batch(images, None, torch.arange(args.batch_size), gen, 0.0)
    step_ops(method, opt, batch)  # a first step builds the state (optimiser momenta) that later steps reuse
    with _OpCounter() as c:
        augmented_views(images, method.aug, 32, gen)
    step = step_ops(method, opt, batch)
    ops = dict(views=c.n, backbone_head_loss=step["forward"] - c.n, backward=step["backward"],
               optimizer=step["optimizer_and_after_step"])
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.calls):
            augmented_views(images, method.aug, 32, gen)
        times.append((time.perf_counter() - start) / args.calls * 1e6)
    result = dict(environment(), batch=args.batch_size, image_size=32, threads=1,
                  ops_per_step=ops, views_host_us=round(median(times)),
                  recipe_ops_per_step={name: recipe_ops(name, images) for name in HOST_RECIPES},
                  checkpoint_ms=checkpoint_cost(method, opt, args.repeats),
                  note="Ops include metadata-only ones (views, unbind) that launch nothing but still cost host "
                       "time; the optimiser is fused SGD, as the trainer's on a GPU")
    old = load("host") or {}
    history = old.get("history", {})
    if not history or list(history.values())[-1]["views_ops"] != ops["views"]:  # a row per change of the views
        history[result["commit"]] = dict(views_ops=ops["views"], views_host_us=result["views_host_us"])
    result["history"] = history
    totals = {name: sum(r.values()) for name, r in result["recipe_ops_per_step"].items()}
    recipe_history = old.get("recipe_history", {})
    if not recipe_history or list(recipe_history.values())[-1] != totals:  # a row per change of any recipe's step
        recipe_history[result["commit"]] = totals
    result["recipe_history"] = recipe_history
    print(json.dumps(result), flush=True)
    save(result, "host")
