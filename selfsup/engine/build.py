"""Turn a config (plus data facts) into a resolved config and a ready method, and a checkpoint back into one."""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.backbones import build_backbone, feature_dim
from selfsup.config import OPTIMIZER_FIELDS, TrainConfig, config_from_dict
from selfsup.data.augment import AugmentConfig
from selfsup.data.sources import Dataset
from selfsup.engine.checkpoint import load_checkpoint
from selfsup.engine.optim import OptimizerSettings, resolve_optimizers
from selfsup.errors import UserError
from selfsup.methods import Method, get_method


def augment_config(values: dict[str, Any]) -> AugmentConfig:
    known = {f.name for f in fields(AugmentConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"unknown augment option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def backbone_options(values: dict[str, Any]) -> dict[str, Any]:
    """The config's ``backbone_args`` (``width``, ``stem``), checked by name."""
    unknown = sorted(set(values) - {"width", "stem"})
    if unknown:
        raise UserError(f"unknown backbone option(s) {', '.join(unknown)}; known: stem, width")
    return values


def method_options(cls: type[Method]) -> dict[str, Any]:
    """A method's options (its keyword-only constructor arguments, ``method_args`` in a config) and their
    defaults."""
    return {n: p.default for klass in reversed(cls.__mro__) if issubclass(klass, Method) and "__init__" in vars(klass)
            for n, p in inspect.signature(klass.__init__).parameters.items() if p.kind == p.KEYWORD_ONLY}


def check_method_args(cls: type[Method], args: dict[str, Any]) -> None:
    params = method_options(cls)
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise UserError(f"method {cls.name} has no option(s) {', '.join(unknown)}; "
                        f"its options: {', '.join(sorted(params)) or 'none'}")


def optimizer_settings(cfg: TrainConfig) -> dict[str, OptimizerSettings]:
    """Every optimiser of the run's method with its settings (see :func:`selfsup.engine.optim.resolve_optimizers`)."""
    return resolve_optimizers(get_method(cfg.method), {k: getattr(cfg, k) for k in OPTIMIZER_FIELDS},
                              cfg.optimizers, cfg.batch_size)


def resolve_config(cfg: TrainConfig, data: Dataset) -> TrainConfig:
    """Resolve every ``None`` into the value this run uses, so config.yaml replays it exactly: the image size,
    backbone, augmentation and every optimiser's settings (the first in the top-level keys, the others
    under ``optimizers``)."""
    cls = get_method(cfg.method)
    values = cfg.to_dict()
    values["image_size"] = cfg.image_size or (16 if cfg.data == "digits" else data.native_size)
    values["backbone"] = cfg.backbone or cls.default_backbone
    augment = {**data.augment, **cls.augment_defaults, **cfg.augment}  # the user's keys win, then the method's
    values["augment"] = {k: list(v) if isinstance(v, tuple) else v for k, v in augment.items()}
    settings = [s.to_dict() for s in optimizer_settings(cfg).values()]
    values.update(settings[0])
    values["optimizers"] = dict(zip(list(cls.optimizer_defaults)[1:], settings[1:], strict=True))
    if cfg.steps is None and cfg.epochs is None:
        values["epochs"] = 100
    return config_from_dict(values)


def build_method(cfg: TrainConfig, image_size: int, num_classes: int, backbone: nn.Module | None = None,
                 num_samples: int = 0) -> Method:
    """Seeded construction: the same config and seed give the same initial weights.

    ``num_samples`` is the size of the pretraining set (methods with a memory bank need it).
    """
    cls = get_method(cfg.method)
    check_method_args(cls, cfg.method_args)
    torch.manual_seed(cfg.seed)
    if backbone is None:
        backbone = build_backbone(cfg.backbone or cls.default_backbone, image_size, in_channels=cls.in_channels,
                                  **backbone_options(cfg.backbone_args))
    aug = augment_config({**cls.augment_defaults, **cfg.augment})
    return cls(backbone, feature_dim(backbone, image_size, cls.in_channels), image_size, aug,
               num_classes=num_classes, num_samples=num_samples, **cfg.method_args)


def method_from_checkpoint(path, backbone: nn.Module | None = None,
                           trained: bool = True) -> tuple[Method, dict[str, Any]]:
    """Rebuild the method (and its backbone) stored in a checkpoint; returns it with the checkpoint.

    ``trained=False`` gives the run's initial weights instead (same seed): the random-init lower bound.
    """
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"])
    if backbone is None and cfg.backbone.startswith("custom"):
        raise UserError("this checkpoint holds a custom backbone; load it from Python with backbone=<module>")
    method = build_method(cfg, ckpt["image_size"], ckpt["num_classes"], backbone, ckpt.get("num_samples", 0))
    if trained:
        load_state(method, ckpt["state"], path)
    return method, ckpt


def load_state(module: nn.Module | torch.optim.Optimizer, state: Any, source: str | Path) -> None:
    """``module.load_state_dict(state)``, a mismatch reported as one line naming the checkpoint."""
    try:
        if not isinstance(state, dict):
            raise TypeError("no state")
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
        what = "optimiser state" if isinstance(module, torch.optim.Optimizer) else "weights"
        raise UserError(f"the checkpoint in '{source}' holds {what} that do not fit the run it describes "
                        f"({str(e).splitlines()[0][:120]})") from None
