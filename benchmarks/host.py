"""The host side of a training step on the GPU code path, measured on the CPU (``host``): ATen ops per phase of a
step, the views' host time, every CIFAR-10 recipe's ops per step, and what a checkpoint costs the step loop."""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import selfsup
import selfsup.data.augment
import selfsup.data.ops.base
import selfsup.data.ops.color
from benchmarks.common import ROOT, environment, median, save
from benchmarks.tables import load, recipe_total
from selfsup.config import TrainConfig, config_from_dict, load_config
from selfsup.data.sources import Dataset, ImageSet
from selfsup.data.views import augmented_views
from selfsup.engine.batches import batches
from selfsup.engine.build import optimizer_settings, resolve_config
from selfsup.engine.checkpoint import CheckpointWriter, save_checkpoint
from selfsup.engine.loop import Loop
from selfsup.engine.optim import build_optimizer
from selfsup.engine.step import Stepper
from selfsup.engine.trainer import build_model, schedule
from selfsup.methods import Batch

RECIPES = ROOT / "recipes/cifar10"
#: the random images every recipe is counted on: enough for the whole-set passes before the first step (memory
#: banks, k-means, a BoWNet vocabulary), few enough that those take seconds
TINY = 256
#: the length of every counted run: its second (last) step is counted, past the first step's building of the
#: optimisers' state and, at progress 0.5, on the path most of a run takes (triplet mines hard negatives from 10% of
#: the run on, decoupling weights rotations from 86% on)
STEPS = 2
#: recipe options that ``TINY`` images cannot hold: the value counted with instead, and why (kept in the row)
OVERRIDES: dict[str, tuple[dict[str, Any], str]] = {
    "exemplar": ({"seeds": TINY}, f"4000 seed images do not fit in {TINY}"),
    "multi-task": ({"task_args": {"exemplar": {"seeds": TINY}}}, f"exemplar's 50000 seeds do not fit in {TINY}"),
    **{name: ({key: TINY // 2}, f"4096 negatives from a bank of {TINY} rows would be the whole bank (another code "
                                 f"path), so {TINY // 2} are drawn, sampled as from CIFAR-10's")
       for name, key in (("npid", "negatives"), ("decoupling", "negatives"), ("cmc", "num_negatives"))},
}
TEACHER_NOTE = "runs/rotnet-cifar10 is not here: a 2-step run of recipes/cifar10/rotnet.yaml on the same images"


class _OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched while active (what the host pays for, once per op and kernel launch); the
    profiler's markers (the ``record_function`` ranges of the step's phases and of the optimisers) are not ops."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func.namespace != "profiler"
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def gpu_code_path() -> Iterator[None]:
    """The augmentation ops take their GPU arrangement (masked ops on the whole batch, all views at once) on the
    CPU, so that the ops counted are those a GPU step launches."""
    modules = (selfsup.data.augment, selfsup.data.ops.base, selfsup.data.ops.color)
    saved = [m.accelerated for m in modules]
    for m in modules:
        m.accelerated = lambda t: True
    try:
        yield
    finally:
        for m, fn in zip(modules, saved, strict=True):
            m.accelerated = fn


def tiny_data(n: int = TINY, size: int = 32, classes: int = 10) -> Dataset:
    """``n`` seeded random uint8 images of ``size`` px labelled 0 .. ``classes`` - 1 in turn, as pretraining set."""
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return Dataset("host", pretrain=ImageSet(images, torch.arange(n) % classes))


def engine_for(cfg: TrainConfig, data: Dataset, out: Path) -> Loop:
    """The trainer's method, optimisers, Stepper and loop state for ``cfg`` on ``data``, built by the trainer's own
    functions as :func:`selfsup.engine.trainer.train` builds them, on the CPU with the GPU's layout and optimisers
    (channels-last, fused unless LARS). No logger: the loop serves for its epoch hook and batches only."""
    device = torch.device("cpu")
    cfg = resolve_config(cfg, data)
    per_epoch, total = schedule(cfg, len(data.pretrain))
    method, model, local_bn = build_model(cfg, data, None, device)
    method.to(memory_format=torch.channels_last)  # in place, as build_model does on a GPU
    settings = optimizer_settings(cfg)
    params = {name: [p for p in method.parameters_of(name) if p.requires_grad] for name in settings}
    optimizers = {name: build_optimizer(params[name], s, fused=s.optimizer != "lars") for name, s in settings.items()}
    stepper = Stepper(method, model, optimizers, settings, params, total, per_epoch, device)
    return Loop(cfg, out, method, stepper, optimizers, data, device, per_epoch, total, 0, None, local_bn, True, {})


def count_steps(loop: Loop) -> dict[str, Any]:
    """ATen ops of the last step of the loop's run (of ``loop.total`` steps; :data:`STEPS` is the steady state), run
    as :meth:`Loop.run` runs them: batches (the epoch hook before the first) from the engine's
    :func:`~selfsup.engine.batches.batches`, the Stepper's phases, then ``after_step``. Drawing the batch is not
    counted.

    The row: ``total``; per phase (``method.phases``) its ``forward`` (views, networks, loss), ``backward`` (the sum
    of a dict's loss terms, backward) and ``step`` (the optimiser's step, the step's logged values); ``after_step``."""
    source = batches(loop.data.pretrain, loop.images, loop.labels, loop.cfg, 0, loop.total, loop.per_epoch,
                     loop.device, lambda: None, loop.epoch_start, None, loop.fields)
    loop.method.train()
    try:
        for step, batch in enumerate(source):
            row = _count_step(loop, step, batch)
    finally:
        source.close()
    return row


def _count_step(loop: Loop, step: int, batch: Batch) -> dict[str, Any]:
    """One step of :meth:`Loop.run` counted, cut into segments where the method's forward starts and ends and where
    an optimiser's step starts (hooks); ``total`` is counted apart, so that ops outside every segment would show."""
    counter, marks = _OpCounter(), []

    def mark(segment: str):  # the segment that starts here
        return lambda *_: marks.append((segment, counter.n))

    method = loop.method
    handles = [method.register_forward_pre_hook(mark("forward")), method.register_forward_hook(mark("backward")),
               *(opt.register_step_pre_hook(mark("step")) for opt in loop.optimizers.values())]
    try:
        with counter:
            loop.stepper.set_rates(step)
            loop.stepper.run(batch)
            mark("after_step")()
            method.after_step((step + 1) / loop.total)
    finally:
        for h in handles:
            h.remove()
    mark("end")()
    kinds = [k for k, _ in marks]
    if kinds != ["forward", "backward", "step"] * len(method.phases) + ["after_step", "end"]:
        raise RuntimeError(f"{method.name}: the step ran {kinds}, not forward, backward, step per phase")
    sizes = [b - a for (_, a), (_, b) in zip(marks, marks[1:])]
    phases = [dict(optimizer=name, forward=sizes[3 * i], backward=sizes[3 * i + 1], step=sizes[3 * i + 2])
              for i, name in enumerate(method.phases)]
    return dict(method=method.name, total=counter.n, phases=phases, after_step=sizes[-1])


def recipe_config(name: str, batch_size: int, teacher: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """``recipes/cifar10/<name>.yaml`` for :data:`STEPS` steps of ``batch_size`` images, with the :data:`OVERRIDES`
    of options that tiny data cannot hold and a teacher that is not here replaced by :func:`tiny_teacher` in
    ``teacher``; returns the config and what was overridden (nothing, or ``overrides`` and ``note``)."""
    values = load_config(RECIPES / f"{name}.yaml")
    args, why = dict(values.get("method_args") or {}), {}
    changed, note = OVERRIDES.get(name, ({}, ""))
    if changed:
        args, why = _merged(args, changed), dict(overrides=changed, note=note)
    if "teacher" in args and not Path(args["teacher"]).exists():
        args["teacher"] = str(tiny_teacher(teacher))
        why = dict(overrides={**why.get("overrides", {}), "teacher": "2-step rotnet"},
                   note="; ".join(filter(None, [why.get("note"), TEACHER_NOTE])))
    return config_from_dict({**values, "method_args": args, "batch_size": batch_size, "epochs": None,
                            "steps": STEPS}), why


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied key by key, nested mappings merged."""
    out = dict(base)
    for k, v in changes.items():
        out[k] = _merged(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def tiny_teacher(out: Path) -> Path:
    """A run of ``recipes/cifar10/rotnet.yaml`` for :data:`STEPS` steps of 8 images of :func:`tiny_data` in ``out``
    (trained once): a teacher of the right kind for BoWNet's recipe, whose own (a 100-epoch RotNet run) is not
    here."""
    if not (out / "checkpoint.pt").exists():
        values = {**load_config(RECIPES / "rotnet.yaml"), "epochs": None, "steps": STEPS, "batch_size": 8,
                  "device": "cpu"}
        selfsup.train(config_from_dict(values), out, data=tiny_data(), evaluate=False, show_progress=False)
    return out


def recipe_ops(name: str, batch_size: int, work: Path) -> dict[str, Any]:
    """ATen ops of the last training step of ``recipes/cifar10/<name>.yaml`` (its method, options and optimisers)
    at ``batch_size`` on :func:`tiny_data`, through the engine (:func:`count_steps`) on the GPU code path; ``work``
    holds the loop's folder and any teacher it trains. The row of :func:`count_steps` with the recipe's
    overrides."""
    cfg, why = recipe_config(name, batch_size, work / "teacher")
    with gpu_code_path():
        return {**count_steps(engine_for(cfg, tiny_data(), work)), **why}


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
    """The host side of one SimCLR ResNet-18 step on the GPU code path, measured on the CPU, and the ops per step of
    every CIFAR-10 recipe.

    On a GPU the step of ResNet-18 on CIFAR is bound by the host when the host cannot issue kernels as fast
    as the GPU runs them (benchmarks/results/gpu.json: 21 ms of kernels, ~28 ms per step). Each ATen op
    dispatched is host work paid once per kernel launch, so this counts the ops of each phase of a step
    (views, backbone + head + loss, backward, optimiser) with the masked augmentation ops on their dense
    GPU path, and times the views on a batch of 8 (one thread), small enough that per-op overhead, not
    arithmetic, is what the clock sees.
    """
    torch.set_num_threads(1)
    cfg = TrainConfig(method="simclr", data="cifar10", backbone="resnet18", batch_size=args.batch_size, steps=STEPS)
    with tempfile.TemporaryDirectory() as tmp, gpu_code_path():
        loop = engine_for(cfg, tiny_data(), Path(tmp))
        step = count_steps(loop)
        images, gen = loop.images[: args.batch_size], torch.Generator().manual_seed(0)
        with _OpCounter() as c:
            augmented_views(images, loop.method.aug, 32, gen)
        (phase,) = step["phases"]
        ops = dict(views=c.n, backbone_head_loss=phase["forward"] - c.n, backward=phase["backward"],
                   optimizer=phase["step"] + step["after_step"])
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(args.calls):
                augmented_views(images, loop.method.aug, 32, gen)
            times.append((time.perf_counter() - start) / args.calls * 1e6)
        recipes = {}
        for path in sorted(RECIPES.glob("*.yaml")):
            recipes[path.stem] = recipe_ops(path.stem, args.batch_size, Path(tmp))
            print(path.stem, recipes[path.stem], flush=True)
    result = dict(environment(), batch=args.batch_size, image_size=32, threads=1,
                  ops_per_step=ops, views_host_us=round(median(times)), recipe_images=TINY, recipe_steps=STEPS,
                  recipe_ops_per_step=recipes,
                  checkpoint_ms=checkpoint_cost(loop.method, loop.optimizers["main"], args.repeats),
                  note="Ops include metadata-only ones (views, unbind) that launch nothing but still cost host "
                       "time; the optimiser is fused SGD, as the trainer's on a GPU")
    old = load("host") or {}
    history = old.get("history", {})
    if not history or list(history.values())[-1]["views_ops"] != ops["views"]:  # a row per change of the views
        history[result["commit"]] = dict(views_ops=ops["views"], views_host_us=result["views_host_us"])
    result["history"] = history
    totals = {name: recipe_total(r) for name, r in recipes.items()}
    recipe_history = old.get("recipe_history", {})
    if not recipe_history or list(recipe_history.values())[-1] != totals:  # a row per change of any recipe's step
        recipe_history[result["commit"]] = totals
    result["recipe_history"] = recipe_history
    print(json.dumps(result), flush=True)
    save(result, "host")
