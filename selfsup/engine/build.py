"""Turn a config (plus data facts) into a ready method, and a checkpoint back into one."""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import Any

import torch
from torch import nn

from selfsup.backbones import build_backbone, feature_dim
from selfsup.config import TrainConfig, config_from_dict
from selfsup.data.augment import AugmentConfig
from selfsup.engine.checkpoint import load_checkpoint
from selfsup.errors import UserError
from selfsup.methods import Method, get_method


def augment_config(values: dict[str, Any]) -> AugmentConfig:
    known = {f.name for f in fields(AugmentConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"unknown augment option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


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


def build_method(cfg: TrainConfig, image_size: int, num_classes: int, backbone: nn.Module | None = None,
                 num_samples: int = 0) -> Method:
    """Seeded construction: the same config and seed give the same initial weights.

    ``num_samples`` is the size of the pretraining set (methods with a memory bank need it).
    """
    cls = get_method(cfg.method)
    check_method_args(cls, cfg.method_args)
    torch.manual_seed(cfg.seed)
    backbone = backbone if backbone is not None else build_backbone(cfg.backbone, image_size)
    aug = augment_config({**cls.augment_defaults, **cfg.augment})
    return cls(backbone, feature_dim(backbone, image_size), image_size, aug,
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
        method.load_state_dict(ckpt["state"])
    return method, ckpt
