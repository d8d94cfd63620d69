"""The rows every ``selfsup eval`` table shows (each run next to its own random init and random rescaled), and the
protocols ``eval few-label`` and ``eval finetune``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from selfsup.cli.commands import _note
from selfsup.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from selfsup.data import Dataset

#: the rows of a run: its trained weights, its random init, its random init rescaled (Krähenbühl et al., 2016)
KINDS = ("pretrained", "random", "rescaled")


class Row(NamedTuple):
    """One encoder of a table: its first column, its full name (plot legends), backbone, image size, the data."""

    label: str
    name: str
    backbone: str
    size: int
    encoder: nn.Module
    data: Any  # a Dataset, or (train, test) DenseSets for the dense protocols


def _labeled(args: argparse.Namespace, size: int) -> Dataset:
    """``--data`` at ``size``, which must have labeled train and test splits."""
    from selfsup.data import load_data

    data = load_data(args.data, size, args.download)
    if not data.evaluable:
        raise UserError(f"'{args.data}' has no labeled train and test splits to evaluate on")
    return data


def eval_rows(args: argparse.Namespace, kinds: tuple[str, ...] = KINDS,
              load: Callable[[argparse.Namespace, int], Any] = _labeled) -> list[Row]:
    """For every ``--checkpoint``: the rows ``kinds`` (same seed for the random ones), with ``load(args, size)``
    (default: ``--data`` with labels) at the run's image size; random rescaled on its train images."""
    from selfsup.engine.build import method_from_checkpoint
    from selfsup.evaluate.rescale import random_rescaled

    rows, datasets = [], {}
    for path in args.checkpoint:
        method, ckpt = method_from_checkpoint(path)
        cfg, size = ckpt["config"], ckpt["image_size"]
        label = f"{cfg['method']} ({Path(path).resolve().name})"
        if size not in datasets:
            datasets[size] = load(args, size)
        data = datasets[size]
        for kind in kinds:
            encoder = method.encoder() if kind == "pretrained" else \
                method_from_checkpoint(path, trained=False)[0].encoder()
            if kind == "rescaled":
                train = data[0] if isinstance(data, tuple) else data.train
                random_rescaled(encoder, train.images, size)
            bound = "" if kind == "pretrained" else f"random {'init' if kind == 'random' else kind}"
            name = f"{label}: {bound}" if bound else label
            first = f"  {bound}" if bound and "pretrained" in kinds else name
            rows.append(Row(first, name, cfg["backbone"], size, encoder, data))
    return rows


def _finetune_args(args: argparse.Namespace, data: Dataset) -> dict:
    """The :func:`selfsup.evaluate.finetune` options the flags set; flips only where the data's recipe flips."""
    from selfsup.evaluate.finetune import finetune_augment

    given = {"epochs": args.epochs, "lr": args.lr, "backbone_lr": args.backbone_lr}
    return {"augment": finetune_augment(flip_p=data.augment.get("flip_p", 0.5)),
            **{k: v for k, v in given.items() if v is not None}}


def _mean_std(values: list[float]) -> str:
    """``"45.3 ± 2.1"`` (percent; the sample std over draws), or just the mean of a single draw."""
    import statistics

    mean = f"{statistics.fmean(values) * 100:.1f}"
    return mean if len(values) < 2 else f"{mean} ± {statistics.stdev(values) * 100:.1f}"


def run_few_label(args: argparse.Namespace, device: torch.device) -> int:
    """``selfsup eval few-label``: probes (and fine-tuning) on class-balanced subsets of the train labels."""
    from selfsup import evaluate
    from selfsup.evaluate.report import format_table

    header, table = ["run", "backbone", "labels", "kNN top-1 %", "linear top-1 %"], []
    if args.finetune:
        header.append("fine-tune top-1 %")
    rows = eval_rows(args)
    for row in rows:  # every bad subset is reported before any work
        evaluate.few_label_subsets(row.data.train.labels, args.fraction, args.per_class, args.draws,
                                   row.data.train.classes)
    for row in rows:
        _note(f"few-label: {row.name} ({row.backbone}, {row.size} px) ...")
        results = evaluate.few_label(row.encoder.to(device), row.data.train, row.data.test, fractions=args.fraction,
                                     per_class=args.per_class, draws=args.draws, image_size=row.size, device=device,
                                     finetune_args=_finetune_args(args, row.data) if args.finetune else None,
                                     progress=lambda m: _note("  " + m))
        table += [[row.label, f"{row.backbone}, {row.size} px", name, *map(_mean_std, scores.values())]
                  for name, scores in results.items()]
    test = len(row.data.test)
    print(format_table(header, table) + f"\n(mean ± std over {args.draws} class-balanced draws of the train labels, "
                                        f"seeds 0-{args.draws - 1}; tested on all {test} test images)")
    return 0


def run_finetune(args: argparse.Namespace, device: torch.device) -> int:
    """``selfsup eval finetune``: the whole network with a new head on the train labels, and its curve."""
    from selfsup import evaluate
    from selfsup.evaluate.report import format_table

    if args.plot and Path(args.plot).suffix.lower() != ".png":
        raise UserError("--plot draws the fine-tuning curves into a .png file")
    kinds = tuple(k for k in KINDS if k in (args.init or KINDS))
    table, curves = [], []
    for row in eval_rows(args, kinds):
        _note(f"finetune: {row.name} ({row.backbone}, {row.size} px) on {len(row.data.train)} images ...")
        result = evaluate.finetune(row.encoder, row.data.train, row.data.test, image_size=row.size, device=device,
                                   progress=lambda m: _note("  " + m), **_finetune_args(args, row.data))
        table.append([row.label, f"{row.backbone}, {row.size} px", result["top1"]])
        curves.append((row.name, result["curve"]))
    if args.plot:
        from selfsup.evaluate.report import plot_curves

        plot_curves(curves, Path(args.plot), f"fine-tuning on {Path(args.data).name}")
    print(format_table(["run", "backbone", "fine-tune top-1 %"], table))
    return 0


def run_dense(args: argparse.Namespace, device: torch.device) -> int:
    """``selfsup eval segmentation|detection``: the whole network fine-tuned with a decoder on its stage maps
    (mIoU) or as a detector's body (mAP), pretrained against random init and random rescaled."""
    from selfsup.data.dense_sources import load_dense
    from selfsup.evaluate.report import format_table, plot_curves

    if args.plot and Path(args.plot).suffix.lower() != ".png":
        raise UserError(f"--plot draws the {args.protocol} curves into a .png file")
    segmentation = args.protocol == "segmentation"
    if segmentation:
        from selfsup.evaluate.segmentation import segment as tune
    else:
        from selfsup.evaluate.detection import detect as tune
    options = {k: v for k, v in {"epochs": args.epochs, "lr": args.lr, "backbone_lr": args.backbone_lr}.items()
               if v is not None}
    kinds = tuple(k for k in KINDS if k in (args.init or KINDS))
    table, curves = [], []
    for row in eval_rows(args, kinds, lambda a, size: load_dense(a.data, size)):
        train, test = row.data
        _note(f"{args.protocol}: {row.name} ({row.backbone}, {row.size} px) on {len(train)} + {len(test)} images ...")
        result = tune(row.encoder, train, test, image_size=row.size, device=device,
                      progress=lambda m: _note("  " + m), **options)
        scores = (result["miou"], result["pixel_acc"]) if segmentation else (result["map50"], result["map"])
        table.append([row.label, f"{row.backbone}, {row.size} px", *scores])
        curves.append((row.name, result["curve"]))
    if args.plot:
        plot_curves(curves, Path(args.plot), f"{args.protocol} on {Path(args.data).name}",
                    ylabel="test mIoU %" if segmentation else "test mAP@0.5 %")
    header = ["mIoU %", "pixel accuracy %"] if segmentation else ["mAP@0.5 %", "mAP@[.5:.95] %"]
    print(format_table(["run", "backbone", *header], table))
    return 0
