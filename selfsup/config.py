"""The run configuration: one dataclass, saved as YAML in every run folder and replayable with --config."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import UserError

OPTIMIZERS = ("sgd", "lars", "adam", "adamw")
SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    """Everything that defines a pretraining run. ``None`` means: the method's or dataset's default.

    The optimiser keys (``optimizer`` .. ``warmup_epochs``) set the method's first optimiser (the one that
    trains the backbone); a method with several (a GAN's generator) takes the others' settings from
    ``optimizers: {name: {key: value}}`` with the same keys.
    """

    method: str = "simclr"
    data: str = "digits"
    backbone: str | None = None  # default: the method's (small for most)
    backbone_args: dict[str, Any] = field(default_factory=dict)  # width (small, alexnet, nin, sngan), stem
    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 256
    optimizer: str | None = None  # sgd | lars | adam | adamw
    lr: float | None = None  # default: method.base_lr * batch_size / 256
    weight_decay: float | None = None
    momentum: float | None = None  # SGD and LARS (default 0.9)
    betas: list[float] | None = None  # Adam and AdamW (default [0.9, 0.999])
    lars_eta: float | None = None  # LARS trust coefficient (the papers' 1e-3; solo-learn's CIFAR recipes: 0.02)
    lars_clip: bool | None = None  # LARS step min(eta |p|/|g|, lr) instead of lr * eta |p|/|g| (solo-learn)
    norm_bias_lr_scale: float | None = None  # lr multiplier for biases and norm weights (Barlow Twins: 0.024)
    schedule: str | None = None  # cosine (default) | constant, after the warmup
    warmup_epochs: float | None = None  # linear warmup (default 1), at most a tenth of the run
    optimizers: dict[str, dict[str, Any]] = field(default_factory=dict)
    image_size: int | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    knn_every: int = 0  # run the kNN monitor every N epochs (0: off)
    log_every: int = 10  # steps between loss syncs / log rows
    download: bool = False
    sync_bn: bool = True  # under DDP: batch norm over the global batch
    compile: bool = False  # torch.compile the backbone (GPU; pays off on long runs)
    stream: bool = False  # decode folder images on demand in DataLoader workers (automatic for large folders)
    workers: int | None = None  # DataLoader workers decoding streamed data (default: the available cores, <= 16)
    method_args: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
#: the keys of one optimiser's settings, top level or under ``optimizers``
OPTIMIZER_FIELDS = ("optimizer", "lr", "weight_decay", "momentum", "betas", "lars_eta", "lars_clip",
                    "norm_bias_lr_scale", "schedule", "warmup_epochs")


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a config, refusing unknown keys by name."""
    if not isinstance(values, dict):
        raise UserError(f"{source}: must hold a mapping of keys to values")
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise UserError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    return TrainConfig(**values)


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (validated later, merged with command-line flags)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file '{p}' does not exist")
    try:
        values = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file '{p}' is not valid YAML: {str(e).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"config file '{p}' cannot be read: {e}") from None
    if not isinstance(values, dict):
        raise UserError(f"config file '{p}' must hold a mapping of keys to values")
    config_from_dict(values, source=str(p))
    return values


# ------------------------------------------------------------------------------------------- validation


def _number(v: Any) -> float | None:
    """``v`` as a finite float (YAML reads ``1e-3`` as a string), or None when it is not a number."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _integer(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _check(key: str, value: Any, convert: Callable[[Any], Any], ok: Callable[[Any], bool], what: str) -> Any:
    got = convert(value)
    if got is None or not ok(got):
        raise UserError(f"{key} must be {what} (got {value!r})")
    return got


_RULES: dict[str, tuple[Callable[[Any], Any], Callable[[Any], bool], str]] = {
    "epochs": (_integer, lambda v: v > 0, "a positive integer"),
    "steps": (_integer, lambda v: v > 0, "a positive integer"),
    "batch_size": (_integer, lambda v: v > 0, "a positive integer"),
    "image_size": (_integer, lambda v: v > 0, "a positive integer"),
    "log_every": (_integer, lambda v: v > 0, "a positive integer"),
    "workers": (_integer, lambda v: v >= 0, "a non-negative integer"),
    "knn_every": (_integer, lambda v: v >= 0, "a non-negative integer"),
    "seed": (_integer, lambda v: 0 <= v < 2**62, "a non-negative integer"),
    "lr": (_number, lambda v: v > 0, "a positive number"),
    "lars_eta": (_number, lambda v: v > 0, "a positive number"),
    "weight_decay": (_number, lambda v: v >= 0, "a non-negative number"),
    "momentum": (_number, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "norm_bias_lr_scale": (_number, lambda v: v >= 0, "a non-negative number"),
    "warmup_epochs": (_number, lambda v: v >= 0, "a non-negative number"),
    "betas": (lambda v: [_number(b) for b in v] if isinstance(v, list | tuple) and len(v) == 2 else None,
              lambda v: all(b is not None and 0 <= b < 1 for b in v), "a list of two numbers in [0, 1)"),
    "optimizer": (lambda v: v if isinstance(v, str) else None, lambda v: v in OPTIMIZERS,
                  f"one of {', '.join(OPTIMIZERS)}"),
    "schedule": (lambda v: v if isinstance(v, str) else None, lambda v: v in SCHEDULES,
                 f"one of {', '.join(SCHEDULES)}"),
    "device": (lambda v: v if isinstance(v, str) else None,
               lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:"), "cpu, cuda, cuda:N or auto"),
    "method": (lambda v: v if isinstance(v, str) and v else None, bool, "a method name"),
    "data": (lambda v: v if isinstance(v, str) and v else None, bool, "a data set name, folder or wds: spec"),
    "backbone": (lambda v: v if isinstance(v, str) and v else None, bool, "a backbone name"),
    **{k: (lambda v: v if isinstance(v, bool) else None, lambda v: True, "true or false")
       for k in ("lars_clip", "download", "sync_bn", "compile", "stream")},
    **{k: (lambda v: v if isinstance(v, dict) else None, lambda v: all(isinstance(key, str) for key in v),
           "a mapping of names to values") for k in ("method_args", "augment", "optimizers", "backbone_args")},
}


def validate(cfg: TrainConfig) -> None:
    """Every key's type and range (one line naming the key), and the choices that need no data. Numbers
    that YAML read as strings (``1e-3``) are converted in place."""
    for key, (convert, ok, what) in _RULES.items():
        value = getattr(cfg, key)
        if value is not None:
            setattr(cfg, key, _check(key, value, convert, ok, what))
    for name, settings in cfg.optimizers.items():
        if not isinstance(settings, dict):
            raise UserError(f"optimizers.{name} must be a mapping of optimiser keys to values (got {settings!r})")
        unknown = sorted(set(settings) - set(OPTIMIZER_FIELDS))
        if unknown:
            raise UserError(f"optimizers.{name}: unknown key(s) {', '.join(unknown)}; "
                            f"known: {', '.join(OPTIMIZER_FIELDS)}")
        for key, value in settings.items():
            if value is not None:
                settings[key] = _check(f"optimizers.{name}.{key}", value, *_RULES[key])
    if cfg.epochs is not None and cfg.steps is not None:
        raise UserError("give --epochs or --steps, not both")
