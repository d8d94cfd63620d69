"""The evaluations of ``selfsup bench``: one cell per (row, evaluation), each a JSON file with its result, the command
that reproduces it, the commit and the time it took."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

import selfsup
from selfsup import evaluate
from selfsup.bench.rows import Budget
from selfsup.data.augment import AugmentConfig
from selfsup.data.sources import Dataset
from selfsup.errors import UserError
from selfsup.evaluate.finetune import finetune_augment

#: what ``--evaluations`` may name (``knn`` and ``linear`` share one feature extraction: the ``probe`` cell)
EVALUATIONS = ("knn", "linear", "layers", "few-label", "finetune", "transfer", "dense")
FEW_LABEL = (0.01, 0.1)


@dataclass
class Context:
    """What an evaluation needs besides the encoder: the data at the runs' size, the budget, where to compute."""

    data: Dataset
    size: int
    budget: Budget
    device: torch.device
    transfer: Dataset | None = None
    progress: Callable[[str], None] = print


def probe(encoder: nn.Module, ctx: Context) -> dict:
    """kNN (k 200, T 0.1) and linear-probe top-1 on the frozen features."""
    return evaluate.probe(encoder, ctx.data.train, ctx.data.test, image_size=ctx.size, device=ctx.device)


def layers(encoder: nn.Module, ctx: Context) -> dict:
    """Linear-probe top-1 on every stage's output (the seeds' per-layer table)."""
    return evaluate.layers(encoder, ctx.data.train, ctx.data.test, image_size=ctx.size, device=ctx.device,
                           progress=ctx.progress)


def few_label(encoder: nn.Module, ctx: Context) -> dict:
    """kNN and linear probe trained on 1% and 10% of every class's train labels, three draws each, and the whole
    network fine-tuned on every draw (the semi-supervised table of Chen et al., ICML 2020): each fine-tuning sees as
    many images as the budget's fine-tuning epochs over 10% of the labels (1%: ten times the epochs)."""
    out: dict = {}
    for fraction in FEW_LABEL:
        epochs = max(1, round(ctx.budget.finetune_epochs * max(FEW_LABEL) / fraction))
        out |= evaluate.few_label(encoder, ctx.data.train, ctx.data.test, fractions=(fraction,), draws=3,
                                  finetune_args=dict(epochs=epochs, augment=_augment(ctx)), image_size=ctx.size,
                                  device=ctx.device, progress=ctx.progress)
    return out


def finetune(encoder: nn.Module, ctx: Context) -> dict:
    """The whole network with a new head on the train labels for the budget's epochs: top-1 and its curve."""
    return evaluate.finetune(encoder, ctx.data.train, ctx.data.test, epochs=ctx.budget.finetune_epochs,
                             augment=_augment(ctx), image_size=ctx.size, device=ctx.device, progress=ctx.progress)


def _augment(ctx: Context) -> AugmentConfig:
    """The fine-tuning augmentation, without flips where the data set has none (digits)."""
    return finetune_augment(flip_p=ctx.data.augment.get("flip_p", 0.5))


def transfer(encoder: nn.Module, ctx: Context) -> dict:
    """kNN and linear probe on another labeled data set (``--transfer``), at the size the encoder trained at."""
    if ctx.transfer is None:
        raise UserError("the transfer evaluation needs --transfer DATA (a labeled data set, e.g. Caltech-101)")
    return evaluate.probe(encoder, ctx.transfer.train, ctx.transfer.test, image_size=ctx.size, device=ctx.device)


def dense(encoder: nn.Module, ctx: Context) -> dict:
    """Segmentation (mIoU) and detection (mAP) fine-tuned for the budget's epochs on the generated scenes, rendered
    at the size the encoder trained at."""
    from selfsup.data.dense_sources import load_dense
    from selfsup.evaluate.detection import detect
    from selfsup.evaluate.segmentation import segment

    train, test = load_dense("scenes", ctx.size)
    kw = dict(epochs=ctx.budget.finetune_epochs, image_size=ctx.size, device=ctx.device, progress=ctx.progress)
    seg, det = segment(encoder, train, test, **kw), detect(encoder, train, test, **kw)
    return dict(miou=seg["miou"], pixel_acc=seg["pixel_acc"], map50=det["map50"], map=det["map"],
                segmentation_curve=seg["curve"], detection_curve=det["curve"])


#: the cell every evaluation name computes
CELLS: dict[str, Callable[[nn.Module, Context], dict]] = {
    "probe": probe, "layers": layers, "few-label": few_label, "finetune": finetune, "transfer": transfer,
    "dense": dense}


def cell_names(evaluations: str) -> list[str]:
    """The cells of ``--evaluations`` (comma-separated names of :data:`EVALUATIONS`, or ``all``), in table order."""
    names = list(EVALUATIONS) if evaluations == "all" else [e.strip() for e in evaluations.split(",") if e.strip()]
    unknown = [e for e in names if e not in EVALUATIONS]
    if unknown or not names:
        raise UserError(f"unknown evaluation {', '.join(unknown) or '(none)'} for --evaluations; choose from "
                        f"{', '.join(EVALUATIONS)} or all")
    cells = ["probe" if e in ("knn", "linear") else e for e in names]
    return [c for c in CELLS if c in cells]


def cell_path(out: Path, row: str, cell: str) -> Path:
    return out / "cells" / row.replace(" ", "-") / f"{cell}.json"


def read_cell(out: Path, row: str, cell: str) -> dict | None:
    path = cell_path(out, row, cell)
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None  # a cell that cannot be read is computed again


def write_cell(out: Path, row: str, cell: str, record: dict) -> None:
    """Write the cell atomically (a killed bench leaves the previous file or none, never half of one)."""
    path = cell_path(out, row, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)


def commit() -> str:
    """The source the numbers come from: the git commit of the package (``+dirty`` with local changes), else the
    installed version."""
    root = Path(selfsup.__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"selfsup {getattr(selfsup, '__version__', '?')}"


def compute(out: Path, row: str, cell: str, encoder: nn.Module, ctx: Context, command: str) -> dict:
    """Run the evaluation ``cell`` on ``encoder`` and write its JSON record."""
    started = time.monotonic()
    result = CELLS[cell](encoder, ctx)
    record = dict(row=row, evaluation=cell, result=result, command=command, commit=commit(),
                  date=f"{datetime.now():%Y-%m-%d %H:%M}", seconds=round(time.monotonic() - started, 1),
                  budget=ctx.budget.name, data=ctx.data.name, image_size=ctx.size)
    write_cell(out, row, cell, record)
    return record
