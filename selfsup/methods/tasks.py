"""What multi-task self-supervision builds its tasks from (Doersch & Zisserman, "Multi-task Self-Supervised Visual
Learning", ICCV 2017): the one shared trunk as each task sees it (input harmonisation, the lasso's stage mix), the
epoch context the tasks share, each task's augmentation, and the checks of the options that name and weigh them."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from selfsup.backbones import Backbone, StageInfo, dummy_pass, feature_map, stage_outputs
from selfsup.data.augment import AugmentConfig
from selfsup.data.views import prepare
from selfsup.errors import UserError
from selfsup.heads.stage_mix import StageMix
from selfsup.methods.base import EpochContext, Method


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


class SharedContext:
    """The epoch context as every task's ``on_epoch_start`` sees it: the same one, except that the tasks' sampling
    weights are collected (and multiplied: a sample is drawn as often as every task's weights allow together)."""

    def __init__(self, ctx: EpochContext) -> None:
        self._ctx, self.weights = ctx, None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def set_sampling_weights(self, weights: Tensor) -> None:
        self.weights = weights if self.weights is None else self.weights * weights


def split_names(value: str | list | tuple) -> list[str]:
    """A comma-separated option (or a YAML list) as its stripped items."""
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [s.strip() for s in items]


def task_augment(cls: type[Method], aug: AugmentConfig) -> AugmentConfig:
    """A task's augmentation: its own defaults (its paper's), over what the data and the user set for the run (the
    fields of ``aug`` that differ from :class:`AugmentConfig`'s defaults, e.g. digits' ``flip_p: 0``)."""
    default = AugmentConfig()
    given = {k: v for k, v in vars(aug).items() if getattr(default, k) != v}
    return AugmentConfig(**{**given, **cls.augment_defaults})


def task_class(name: str, host: type[Method]) -> type[Method]:
    """The registered method ``name``, refused with one line where it cannot be a task of ``host`` (itself, or a
    method that needs labels, several optimisers, per-process batch norm or inputs other than RGB or lightness)."""
    from selfsup.methods import get_method  # the registry imports the multi-task method

    try:
        cls = get_method(name)
    except UserError as e:
        raise UserError(f"multi-task: {e}") from None
    why = ("is multi-task itself" if cls is host else "needs labels" if cls.needs_labels
           else "trains with several optimisers" if len(cls.optimizer_defaults) > 1
           else "keeps batch norm per process" if not cls.global_bn
           else f"sees {cls.in_channels}-channel inputs" if cls.in_channels not in (1, 3) else "")
    if why:
        raise UserError(f"multi-task: the task '{name}' {why}; a task must be a one-optimiser self-supervised "
                        "method on RGB or lightness")
    return cls


def task_classes(tasks: str | list | tuple, host: type[Method]) -> dict[str, type[Method]]:
    """The ``tasks`` option: every named task's class (:func:`task_class`), in order, each named once."""
    names = split_names(tasks)
    classes = [task_class(n, host) for n in names]
    if len(set(names)) != len(names):
        raise UserError(f"multi-task: a task is named twice in '{tasks}'")
    return dict(zip(names, classes, strict=True))


def task_weights(weights: str | float | list | None, n: int) -> list[float]:
    """The ``weights`` option: ``n`` numbers >= 0 (comma-separated or a list), 1 each when not given."""
    if weights is None:
        return [1.0] * n
    try:
        values = [float(w) for w in split_names(str(weights) if isinstance(weights, int | float) else weights)]
    except ValueError:
        values = []
    if len(values) != n or not all(math.isfinite(w) and w >= 0 for w in values):
        raise UserError(f"multi-task: weights must be {n} comma-separated numbers >= 0 (one per task), got "
                        f"'{weights}'")
    return values


def check_task_args(task_args: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """The ``task_args`` option: task names among ``names`` mapped to their options (``{}`` when not given)."""
    task_args = task_args or {}
    if not isinstance(task_args, dict) or not all(isinstance(v, dict | None) for v in task_args.values()):
        raise UserError(f"multi-task: task_args maps task names to their options ({{exemplar: {{seeds: 100}}}}), "
                        f"got {task_args!r}")
    stray = sorted(set(task_args) - set(names))
    if stray:
        raise UserError(f"multi-task: task_args for {', '.join(stray)}, which are not among the tasks {names}")
    return task_args


def check_stage_maps(backbone: nn.Module, image_size: int) -> None:
    """The lasso mixes spatial stage maps: refuse a trunk without them, before any task is built."""
    if not isinstance(backbone, Backbone):
        raise UserError(f"multi-task: lasso needs a backbone with stages (stage_info), not {type(backbone).__name__}")
    if any(m.dim() != 4 for m in dummy_pass(backbone, 3, image_size, stage_outputs)):
        raise UserError(f"multi-task: lasso mixes spatial stage maps; the {type(backbone).__name__} "
                        "backbone's stages are not all (B, C, H, W)")


def build_task(cls: type[Method], host: Method, args: dict[str, Any], lasso: bool) -> Method:
    """``cls`` around ``host``'s trunk (a :class:`TaskTrunk`; with the ``lasso`` its own stage mix), with ``host``'s
    feature size, image size, classes and samples, its own augmentation (:func:`task_augment`) and its options
    ``args``, checked as the engine checks a method's."""
    from selfsup.engine.build import check_method_args  # the engine's own check of a method's options

    try:
        check_method_args(cls, args)
    except UserError as e:
        raise UserError(f"multi-task: task_args: {e}") from None
    mix = StageMix([s.channels for s in host.backbone.stage_info]) if lasso else None
    return cls(TaskTrunk(host.backbone, cls.in_channels, mix), host.feat_dim, host.image_size,
               task_augment(cls, host.aug), num_classes=host.num_classes, num_samples=host.num_samples, **args)
