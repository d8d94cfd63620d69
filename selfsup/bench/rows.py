"""What ``selfsup bench`` trains: the budgets, each method's settings at a budget, and the rows of its tables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selfsup.config import TrainConfig
from selfsup.data.sources import Dataset
from selfsup.errors import UserError
from selfsup.methods import METHODS


@dataclass(frozen=True)
class Budget:
    """How long every method pretrains, on which backbone, and how long the fine-tuning evaluations run."""

    name: str
    backbone: str
    batch_size: int
    steps: int | None = None
    epochs: int | None = None
    finetune_epochs: int = 5
    device: str = "auto"
    small: bool = True  # the costliest methods made smaller (SMALL: GANs, CPC) to fit the budget


BUDGETS = {
    "cpu": Budget("cpu", "small", 256, steps=1000, finetune_epochs=5, device="cpu"),
    "gpu": Budget("gpu", "resnet18", 512, epochs=200, finetune_epochs=30, device="cuda", small=False),
    "smoke": Budget("smoke", "small", 64, steps=30, finetune_epochs=1, device="cpu"),  # seconds: the tests'
}
#: the lower bounds (the budget's backbone at its initial weights, seed 0: as is, and rescaled by Krähenbühl et
#: al.'s data-dependent initialisation) and the upper bound (trained with the labels)
LOWER, UPPER = ("random init", "random rescaled"), "supervised"
#: a method's own settings (method arguments, config keys) where the budget's defaults do not suit it;
#: ``RUN:name`` is the run folder of the bench's row ``name`` (BoWNet learns from the RotNet row's network)
SETTINGS: dict[str, tuple[dict, dict]] = {
    "mae": ({}, {"backbone": "vit-tiny"}),
    "bownet": ({"teacher": "RUN:rotnet"}, {}),
    # every image an exemplar seed, so that all four tasks see the whole set (recipes/cifar10/multi-task.yaml)
    "multi-task": ({"lasso": True, "task_args": {"exemplar": {"seeds": "all"}}}, {}),
}
#: the costliest methods in a small budget (method arguments, largest batch): the GANs' generators at an eighth of
#: their width and batch 128 (a GAN step is ~70x SimCLR's), BiGAN's joint discriminator (a network of its own, the
#: encoder being the backbone) at a quarter (at full width a step took 5.5x as long); CPC at batch 64 (its InfoNCE
#: over every patch of the batch and the trunk on 49 patches per image: a CPU step of 256 takes ~16 s)
SMALL: dict[str, tuple[dict, int]] = {"ssgan": ({"generator_width": 0.125}, 128),
                                      "bigan": ({"generator_width": 0.125, "discriminator_width": 0.25}, 128),
                                      "cpc": ({}, 64)}
#: rows another row learns from, trained first
ORDER_FIRST = ("rotnet",)


def method_rows(spec: str, data: Dataset) -> list[str]:
    """The methods of ``--methods``: ``all`` (every method the data can train: the ones that need labels or
    fields the data lacks are left out) or a comma-separated list; the supervised upper bound always last."""
    names = [m for m in METHODS if m != UPPER] if spec == "all" else [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method {', '.join(unknown)} for --methods; choose from {', '.join(METHODS)} or all")
    if spec == "all":
        names = [m for m in names if usable(m, data)]
    else:
        for m in names:
            if not usable(m, data):
                raise UserError(f"method '{m}' cannot train on '{data.name}': {missing(m, data)}")
    names = sorted(dict.fromkeys(names), key=lambda m: m not in ORDER_FIRST)
    if data.evaluable and UPPER not in names:
        names.append(UPPER)
    return sorted(names, key=lambda m: m == UPPER)


def missing(method: str, data: Dataset) -> str | None:
    """What ``data`` lacks for ``method`` (labels, or a field such as a clip's frames), or None."""
    cls = METHODS[method]
    if cls.needs_labels and not data.pretrain.labeled:
        return "it needs labels"
    lacking = [f for f in cls.needs_fields if f not in data.pretrain.field_names]
    return f"it needs the field{'s' * (len(lacking) > 1)} {', '.join(lacking)}" if lacking else None


def usable(method: str, data: Dataset) -> bool:
    return missing(method, data) is None


def row_config(method: str, budget: Budget, data: str, out: Path) -> TrainConfig:
    """The training config of ``method``'s row at ``budget`` (runs of the bench live in ``out / method``)."""
    args, extra = SETTINGS.get(method, ({}, {}))
    if method in SMALL and budget.small:
        small_args, batch = SMALL[method]
        args, extra = {**args, **small_args}, {**extra, "batch_size": min(batch, budget.batch_size)}
    args = {k: str(out / v.removeprefix("RUN:")) if isinstance(v, str) and v.startswith("RUN:") else v
            for k, v in args.items()}
    base = dict(method=method, data=data, backbone=budget.backbone, batch_size=budget.batch_size, steps=budget.steps,
                epochs=budget.epochs, device=budget.device, method_args=args)
    return TrainConfig(**{**base, **extra})


def same_run(stored: dict, cfg: TrainConfig) -> bool:
    """Whether a run folder's stored config is the run ``cfg`` describes (what decides training, not where)."""
    keys = ("method", "backbone", "steps", "epochs", "batch_size", "method_args", "seed")
    wanted = cfg.to_dict()
    return all(stored.get(k) == wanted.get(k) for k in keys)
