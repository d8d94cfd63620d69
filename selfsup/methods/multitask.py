"""Several pretext tasks on one trunk at once (Doersch & Zisserman, "Multi-task Self-Supervised Visual Learning",
ICCV 2017): the existing methods, each with its own views, heads and loss, all around one shared backbone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.backbones import Backbone, StageInfo, feature_map, stage_outputs
from selfsup.data.augment import AugmentConfig
from selfsup.data.sources import Dataset
from selfsup.data.views import prepare
from selfsup.errors import UserError
from selfsup.heads.stage_mix import StageMix
from selfsup.methods.base import Batch, EpochContext, Method
from selfsup.methods.panels import Panel

#: the paper's best combination without video: relative position, colourisation, exemplar; RotNet (after the paper)
#: stands in for motion segmentation, which needs clips (add it with ``tasks`` on data with ``frames``)
DEFAULT_TASKS = "context,colorization,exemplar,rotnet"


class TaskTrunk(Backbone):
    """The shared trunk as one task sees it. ``in_channels`` 1 (a task that feeds Lab lightness scaled to [-1, 1], as
    colourisation): the paper's input harmonisation, the L channel shown to the RGB trunk as the grey image it is
    (``(L + 1) / 2`` in every channel, ImageNet-normalised as every other task's input). ``mix``: the lasso, the task's
    head reads a :class:`~selfsup.heads.stage_mix.StageMix` of the trunk's stage maps instead of its last map (pooled,
    for heads on feature vectors). The trunk is held, not registered: the multi-task method owns it, so its weights
    appear once in the state dict and the optimiser; :meth:`train` still switches it with the task."""

    def __init__(self, trunk: nn.Module, in_channels: int = 3, mix: StageMix | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "trunk", trunk)
        self.in_channels, self.mix = in_channels, mix

    @property
    def stage_info(self) -> list[StageInfo]:
        if not isinstance(self.trunk, Backbone):
            raise UserError(f"the {type(self.trunk).__name__} backbone does not describe its stages (no stage_info)")
        return self.trunk.stage_info

    def train(self, mode: bool = True) -> TaskTrunk:
        self.trunk.train(mode)
        return super().train(mode)

    def harmonise(self, x: Tensor) -> Tensor:
        """What the RGB trunk sees of the task's input."""
        return prepare(((x + 1.0) / 2.0).expand(-1, 3, -1, -1)) if self.in_channels == 1 else x

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        return stage_outputs(self.trunk, self.harmonise(x))

    def feature_map(self, x: Tensor) -> Tensor:
        if self.mix is not None:
            return self.mix(self.forward_stages(x))
        return feature_map(self.trunk, self.harmonise(x))

    forward_features = feature_map

    def forward_head(self, fmap: Tensor) -> Tensor:
        return self.trunk.forward_head(fmap)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.feature_map(x)) if self.mix is not None else self.trunk(self.harmonise(x))


class _SharedContext:
    """The epoch context as every task's ``on_epoch_start`` sees it: the same one, except that the tasks' sampling
    weights are collected (and multiplied: a sample is drawn as often as every task's weights allow together)."""

    def __init__(self, ctx: EpochContext) -> None:
        self._ctx, self.weights = ctx, None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def set_sampling_weights(self, weights: Tensor) -> None:
        self.weights = weights if self.weights is None else self.weights * weights


def _names(value: str | list | tuple) -> list[str]:
    """A comma-separated option (or a YAML list) as its stripped items."""
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [s.strip() for s in items]


def task_augment(cls: type[Method], aug: AugmentConfig) -> AugmentConfig:
    """A task's augmentation: its own defaults (its paper's), over what the data and the user set for the run (the
    fields of ``aug`` that differ from :class:`AugmentConfig`'s defaults, e.g. digits' ``flip_p: 0``)."""
    default = AugmentConfig()
    given = {k: v for k, v in vars(aug).items() if getattr(default, k) != v}
    return AugmentConfig(**{**given, **cls.augment_defaults})


class MultiTask(Method):
    """Every step runs each task of ``tasks`` (comma-separated method names; default
    :data:`DEFAULT_TASKS`) on the batch, in order, each drawing its random views from the batch's generator as its
    own method does, and returns the terms ``{task: weight * its loss}`` (``weights``: comma-separated, default 1
    each; a task returning several terms gives ``task/term``), summed and logged by the engine. The tasks are the
    registered methods themselves, built around the one shared backbone (:class:`TaskTrunk`), so their heads,
    losses, views, epoch hooks (``on_epoch_start``, ``after_step``), buffers and reports are theirs; every parameter
    belongs to the one optimiser. ``task_args`` gives a task its options (``{exemplar: {seeds: 100}}``). Each task
    augments with its own defaults over the run's data and user settings that it does not set itself
    (:func:`task_augment`). Colourisation's L channel reaches the RGB trunk as a grey image (the paper's input
    harmonisation, :class:`TaskTrunk`). ``needs_fields`` is the tasks' union (motion segmentation needs clips).

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
        names = _names(tasks)
        classes = [self._task_class(n) for n in names]
        if len(set(names)) != len(names):
            raise UserError(f"multi-task: a task is named twice in '{tasks}'")
        self.task_weights = self._weights(weights, len(names))
        task_args = task_args or {}
        if not isinstance(task_args, dict) or not all(isinstance(v, dict | None) for v in task_args.values()):
            raise UserError(f"multi-task: task_args maps task names to their options ({{exemplar: {{seeds: 100}}}}), "
                            f"got {task_args!r}")
        stray = sorted(set(task_args) - set(names))
        if stray:
            raise UserError(f"multi-task: task_args for {', '.join(stray)}, which are not among the tasks {names}")
        if not lasso_weight >= 0:
            raise UserError(f"multi-task: lasso_weight must be >= 0, got {lasso_weight}")
        self.lasso, self.lasso_weight = lasso, lasso_weight
        if lasso:
            self._check_lasso()
        from selfsup.engine.build import check_method_args  # the engine's own check of a method's options

        self.tasks = nn.ModuleDict()
        for name, cls in zip(names, classes, strict=True):
            args = dict(task_args.get(name) or {})
            try:
                check_method_args(cls, args)
            except UserError as e:
                raise UserError(f"multi-task: task_args: {e}") from None
            mix = StageMix([s.channels for s in self.backbone.stage_info]) if lasso else None
            self.tasks[name] = cls(TaskTrunk(self.backbone, cls.in_channels, mix), self.feat_dim, self.image_size,
                                   task_augment(cls, self.aug), num_classes=self.num_classes,
                                   num_samples=self.num_samples, **args)
        self.needs_fields = tuple(dict.fromkeys(f for cls in classes for f in cls.needs_fields))

    @staticmethod
    def _task_class(name: str) -> type[Method]:
        from selfsup.methods import get_method  # the registry imports this module

        try:
            cls = get_method(name)
        except UserError as e:
            raise UserError(f"multi-task: {e}") from None
        why = ("is multi-task itself" if cls is MultiTask else "needs labels" if cls.needs_labels
               else "trains with several optimisers" if len(cls.optimizer_defaults) > 1
               else "keeps batch norm per process" if not cls.global_bn
               else f"sees {cls.in_channels}-channel inputs" if cls.in_channels not in (1, 3) else "")
        if why:
            raise UserError(f"multi-task: the task '{name}' {why}; a task must be a one-optimiser self-supervised "
                            "method on RGB or lightness")
        return cls

    @staticmethod
    def _weights(weights: str | float | list | None, n: int) -> list[float]:
        if weights is None:
            return [1.0] * n
        try:
            values = [float(w) for w in _names(str(weights) if isinstance(weights, int | float) else weights)]
        except ValueError:
            values = []
        if len(values) != n or not all(math.isfinite(w) and w >= 0 for w in values):
            raise UserError(f"multi-task: weights must be {n} comma-separated numbers >= 0 (one per task), got "
                            f"'{weights}'")
        return values

    def _check_lasso(self) -> None:
        """The lasso mixes spatial stage maps: refuse a trunk without them, before any task is built."""
        if not isinstance(self.backbone, Backbone):
            raise UserError(f"multi-task: lasso needs a backbone with stages (stage_info), not "
                            f"{type(self.backbone).__name__}")
        was_training = self.backbone.training
        param = next(self.backbone.parameters(), None)
        self.backbone.eval()
        try:
            with torch.no_grad():
                zeros = torch.zeros(2, 3, self.image_size, self.image_size,
                                    device=None if param is None else param.device)
                maps = self.backbone.forward_stages(zeros)
        finally:
            self.backbone.train(was_training)
        if any(m.dim() != 4 for m in maps):
            raise UserError(f"multi-task: lasso mixes spatial stage maps; the {type(self.backbone).__name__} "
                            "backbone's stages are not all (B, C, H, W)")

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
        shared = _SharedContext(ctx)
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
            draw_gates(gates, stages, out / "lasso.png")
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


def draw_gates(gates: dict[str, list[float]], stages: list[str], out: Path) -> None:
    """The lasso's learnt combination weights as a task x stage table of |gate|, values written in."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.abs(np.array(list(gates.values())))
    fig, ax = plt.subplots(figsize=(1.2 * len(stages) + 2, 0.6 * len(gates) + 1.5))
    ax.imshow(values, cmap="viridis", vmin=0)
    ax.set_xticks(range(len(stages)), stages)
    ax.set_yticks(range(len(gates)), list(gates))
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < values.max() / 2 else "black")
    ax.set_title("multi-task lasso: |gate| of every stage, per task")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
