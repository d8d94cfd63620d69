"""The run configuration: one dataclass, saved as YAML in every run folder and replayable with --config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import UserError


@dataclass
class TrainConfig:
    """Everything that defines a pretraining run. ``None`` means: the method's or dataset's default."""

    method: str = "simclr"
    data: str = "digits"
    backbone: str = "small"
    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 256
    lr: float | None = None  # default: method.base_lr * batch_size / 256
    weight_decay: float | None = None
    optimizer: str | None = None  # sgd | lars
    lars_eta: float = 0.001  # LARS trust coefficient (the papers' 1e-3; solo-learn's CIFAR recipes: 0.02)
    lars_clip: bool = False  # LARS step min(eta |p|/|g|, lr) instead of lr * eta |p|/|g| (solo-learn)
    norm_bias_lr_scale: float = 1.0  # lr multiplier for biases and norm weights (Barlow Twins' paper: 0.024)
    momentum: float = 0.9
    warmup_epochs: float = 1.0  # linear warmup, at most a tenth of the run (short runs keep their budget)
    image_size: int | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    knn_every: int = 0  # run the kNN monitor every N epochs (0: off)
    log_every: int = 10  # steps between loss syncs / log rows
    download: bool = False
    sync_bn: bool = True  # under DDP: batch norm over the global batch
    compile: bool = False  # torch.compile the backbone (GPU; pays off on long runs)
    stream: bool = False  # decode folder images on demand in DataLoader workers (automatic for large folders)
    workers: int = 8  # DataLoader worker processes for streamed data
    method_args: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a config, refusing unknown keys by name."""
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
    if not isinstance(values, dict):
        raise UserError(f"config file '{p}' must hold a mapping of keys to values")
    config_from_dict(values, source=str(p))
    return values


def validate(cfg: TrainConfig) -> None:
    """Checks that need no data: positive numbers, known names."""
    if not isinstance(cfg.workers, int) or cfg.workers < 0:
        raise UserError(f"--workers must be a non-negative integer (got {cfg.workers})")
    for name in ("epochs", "steps", "batch_size", "image_size", "log_every"):
        v = getattr(cfg, name)
        if v is not None and (not isinstance(v, int) or v <= 0):
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer (got {v})")
    if cfg.lr is not None and not cfg.lr > 0:
        raise UserError(f"--lr must be positive (got {cfg.lr})")
    if not cfg.lars_eta > 0:
        raise UserError(f"lars_eta must be positive (got {cfg.lars_eta})")
    for name in ("weight_decay", "momentum", "warmup_epochs", "norm_bias_lr_scale"):
        v = getattr(cfg, name)
        if v is not None and not v >= 0:
            raise UserError(f"{name} must not be negative (got {v})")
    if not isinstance(cfg.knn_every, int) or cfg.knn_every < 0:
        raise UserError(f"--knn-every must be a non-negative integer (got {cfg.knn_every})")
    if cfg.epochs is not None and cfg.steps is not None:
        raise UserError("give --epochs or --steps, not both")
    if cfg.optimizer not in (None, "sgd", "lars"):
        raise UserError(f"unknown optimizer '{cfg.optimizer}'; choose sgd or lars")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise UserError(f"unknown device '{cfg.device}'; choose cpu, cuda or auto")
