"""Several pretext tasks on one trunk at once (Doersch & Zisserman, "Multi-task Self-Supervised Visual Learning",
ICCV 2017): the existing methods, each with its own views, heads and loss, all around one shared backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.data.sources import Dataset
from selfsup.errors import UserError
from selfsup.evaluate.report import plot_heatmap
from selfsup.methods.base import Batch, EpochContext, Method
from selfsup.methods.panels import Panel
from selfsup.methods.tasks import (
    SharedContext,
    build_task,
    check_stage_maps,
    check_task_args,
    task_classes,
    task_weights,
)

#: the paper's best combination without video: relative position, colourisation, exemplar; RotNet (after the paper)
#: stands in for motion segmentation, which needs clips (add it with ``tasks`` on data with ``frames``)
DEFAULT_TASKS = "context,colorization,exemplar,rotnet"


class MultiTask(Method):
    """Every step runs each task of ``tasks`` (comma-separated method names; default
    :data:`DEFAULT_TASKS`) on the batch, in order, each drawing its random views from the batch's generator as its
    own method does, and returns the terms ``{task: weight * its loss}`` (``weights``: comma-separated, default 1
    each; a task returning several terms gives ``task/term``), summed and logged by the engine. The tasks are the
    registered methods themselves, built around the one shared backbone
    (:class:`~selfsup.methods.tasks.TaskTrunk`), so their heads, losses, views, epoch hooks (``on_epoch_start``,
    ``after_step``), buffers and reports are theirs; every parameter belongs to the one optimiser. ``task_args``
    gives a task its options (``{exemplar: {seeds: 100}}``). Each task augments with its own defaults over the run's
    data and user settings that it does not set itself (:func:`~selfsup.methods.tasks.task_augment`). Colourisation's
    L channel reaches the RGB trunk as a grey image (the paper's input harmonisation,
    :class:`~selfsup.methods.tasks.TaskTrunk`). ``needs_fields`` is the tasks' union (motion segmentation needs clips).

    Exemplar restricts every epoch to its seed images (sampling weights): with it, all the tasks train on the seeds,
    so give it as many as the classifier affords (``task_args``). ``lasso``: every task's head reads its own learned
    combination of the trunk's stage maps (:class:`~selfsup.heads.stage_mix.StageMix`, for every task: heads on
    pooled features and on maps alike), plus the term ``lasso = lasso_weight * sum |gates|``; the report draws the
    learnt gates (``lasso.png``) and lists them as ``lasso_<task>_<stage>``. The optimiser is this method's (the
    tasks' own optimiser defaults, e.g. MAE's betas, do not apply). The evaluated encoder is the shared trunk on RGB
    (its last stage).
    """

    name = "multi-task"
    paper = "Doersch, Zisserman, Multi-task Self-Supervised Visual Learning, ICCV 2017"
    pictures = ("lasso.png",)

    def __init__(self, *args, tasks: str = DEFAULT_TASKS, weights: str | None = None,
                 task_args: dict[str, dict[str, Any]] | None = None, lasso: bool = False, lasso_weight: float = 1e-3,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        classes = task_classes(tasks, MultiTask)
        self.task_weights = task_weights(weights, len(classes))
        task_args = check_task_args(task_args, list(classes))
        if not lasso_weight >= 0:
            raise UserError(f"multi-task: lasso_weight must be >= 0, got {lasso_weight}")
        self.lasso, self.lasso_weight = lasso, lasso_weight
        if lasso:
            check_stage_maps(self.backbone, self.image_size)
        self.tasks = nn.ModuleDict({name: build_task(cls, self, dict(task_args.get(name) or {}), lasso)
                                    for name, cls in classes.items()})
        self.needs_fields = tuple(dict.fromkeys(f for cls in classes.values() for f in cls.needs_fields))

    def parameters_of(self, optimizer: str) -> list[nn.Parameter]:
        """The shared trunk's and what every task's own optimiser trains (not, say, a frozen teacher)."""
        tasks = [p for t in self.tasks.values() for p in t.parameters_of(next(iter(t.optimizer_defaults)))]
        return list(dict.fromkeys([*self.backbone.parameters(), *tasks]))

    def check_batch(self, global_batch: int) -> None:
        """Every task's own check."""
        for task in self.tasks.values():
            task.check_batch(global_batch)

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        terms = {}
        for (name, task), weight in zip(self.tasks.items(), self.task_weights, strict=True):
            out = task.training_step(batch)
            parts = out.items() if isinstance(out, dict) else [(None, out)]
            terms.update({name if k is None else f"{name}/{k}": weight * v for k, v in parts})
        if self.lasso:
            terms["lasso"] = self.lasso_weight * self.lasso_penalty()
        return terms

    def lasso_penalty(self) -> Tensor:
        """``sum over tasks and stages of |gate|`` (0 without the lasso)."""
        return sum((t.backbone.mix.penalty() for t in self.tasks.values() if t.backbone.mix is not None),
                   torch.zeros((), device=next(self.parameters()).device))

    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Every task's hook, in order, on the same context; their sampling weights multiplied, set once."""
        shared = SharedContext(ctx)
        for task in self.tasks.values():
            task.on_epoch_start(shared)
        if shared.weights is not None:
            ctx.set_sampling_weights(shared.weights)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Every task's update (EMA targets, banks, ...)."""
        for task in self.tasks.values():
            task.after_step(progress)

    def gates(self) -> dict[str, list[float]]:
        """Every task's learnt stage gates (the lasso's combination weights), in stage order."""
        return {name: t.backbone.mix.gates.detach().float().cpu().tolist() for name, t in self.tasks.items()
                if t.backbone.mix is not None}

    def report(self, out: Path, data: Dataset) -> dict[str, float]:
        """The tasks' own reports (metrics prefixed by the task) and, with the lasso, its gates: ``lasso.png`` and
        ``lasso_<task>_<stage>``."""
        metrics = {f"{name}_{k}": v for name, task in self.tasks.items() for k, v in task.report(out, data).items()}
        gates = self.gates()
        if gates:
            stages = list(self.backbone.stage_names)
            metrics |= {f"lasso_{t}_{s}": g for t, row in gates.items() for s, g in zip(stages, row, strict=True)}
            plot_heatmap({t: [abs(g) for g in row] for t, row in gates.items()}, stages, out / "lasso.png",
                         "multi-task lasso: |gate| of every stage, per task")
        return metrics

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        """Every task's own rows, in training order (the same draws), titles prefixed by the task."""
        return [Panel(f"{name}: {p.title}", p.images, p.captions) for name, task in self.tasks.items()
                for p in task.views(batch)]

    @torch.no_grad()
    def outputs(self, images: Tensor, generator: torch.Generator,
                fields: dict[str, Tensor] | None = None) -> list[Panel]:
        """The tasks' own rows, in order, titles prefixed by the task (the fields go to the tasks that need them)."""
        rows = [(name, task.outputs(images, generator, fields=fields) if task.needs_fields
                 else task.outputs(images, generator)) for name, task in self.tasks.items()]
        return [Panel(f"{name}: {p.title}", p.images, p.captions) for name, panels in rows for p in panels]

