"""Class-balanced few-label subsets of a labeled split: the semi-supervised protocol's 1% and 10% of the labels
(Zhai, Oliver, Kolesnikov, Beyer, "S4L: Self-Supervised Semi-Supervised Learning", ICCV 2019; Chen et al., SimCLR,
ICML 2020, section 4.2: fine-tuning on 1% / 10% of ImageNet's labels, sampled class-balanced)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from selfsup.data.sources import ImageSet
from selfsup.errors import UserError


def _round_up(x: float, digits: int = 2) -> float:
    """``x`` rounded up to ``digits`` significant digits (a threshold to suggest that is never too small)."""
    step = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return math.ceil(x / step - 1e-9) * step


def _class_name(c: int, classes: list[str] | None) -> str:
    return classes[c] if classes is not None and c < len(classes) else str(c)


def _per_class_counts(counts: Tensor, fraction: float | None, per_class: int | None,
                      classes: list[str] | None) -> Tensor:
    """How many images every class keeps (classes absent from the labels keep none), or a one-line UserError."""
    present = counts > 0
    if per_class is not None:
        if per_class < 1:
            raise UserError(f"--per-class must be a positive integer (got {per_class})")
        short = int(torch.where(present, counts, counts.max() + 1).argmin())
        if per_class > counts[short]:
            raise UserError(f"--per-class {per_class} is more than class '{_class_name(short, classes)}' has "
                            f"({int(counts[short])} images)")
        return torch.where(present, per_class, 0)
    if not 0 < fraction <= 1:
        raise UserError(f"--fraction must be in (0, 1] (got {fraction:g})")
    keep = torch.round(counts.double() * fraction).long()  # round half to even, as Python's round()
    empty = present & (keep == 0)
    if empty.any():
        c = int(torch.where(empty, counts, counts.max() + 1).argmin())  # the smallest emptied class
        raise UserError(f"--fraction {fraction:g} leaves class '{_class_name(c, classes)}' ({int(counts[c])} "
                        f"images) with no image; use at least {_round_up(1 / int(counts[present].min())):g} or "
                        f"--per-class")
    return keep


def few_label_indices(labels: Tensor, fraction: float | None = None, per_class: int | None = None, seed: int = 0,
                      classes: list[str] | None = None) -> Tensor:
    """Sorted indices of a class-balanced subset of ``labels``: every class keeps ``round(fraction * its count)``
    images, or ``per_class`` images (exactly one of the two), drawn uniformly without replacement by a
    :class:`torch.Generator` seeded with ``seed`` (the same seed, the same subset). ``classes`` names the classes
    in error messages. A subset that leaves a class with no image is a one-line :class:`UserError`."""
    if (fraction is None) == (per_class is None):
        raise UserError("give exactly one of --fraction and --per-class")
    labels = labels.cpu()
    counts = torch.bincount(labels)
    keep = _per_class_counts(counts, fraction, per_class, classes)
    # a uniformly random order, then grouped by class (stable): each class's images in a random order
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    order = order[torch.sort(labels[order], stable=True).indices]
    grouped = labels[order]
    rank = torch.arange(len(labels)) - (torch.cumsum(counts, 0) - counts)[grouped]  # position within the class
    return order[rank < keep[grouped]].sort().values


def few_label_subsets(labels: Tensor, fractions: Sequence[float] | None = None, per_class: int | None = None,
                      draws: int = 3, classes: list[str] | None = None) -> dict[str, list[Tensor]]:
    """The subsets of the few-label protocol, named: ``{"1%": [indices of seed 0, ..., of seed draws - 1], ...}``
    for each of ``fractions`` (default 1% and 10%), or ``{"N per class": [...]}``; every bad subset (and ``draws``
    below 1) is a one-line :class:`UserError` before any work."""
    if draws < 1:
        raise UserError(f"--draws must be a positive integer (got {draws})")
    if per_class is not None and fractions is not None:
        raise UserError("give exactly one of --fraction and --per-class")
    wanted = [(f"{per_class} per class", None, per_class)] if per_class is not None else \
        [(f"{f * 100:g}%", f, None) for f in fractions or (0.01, 0.1)]
    return {name: [few_label_indices(labels, f, n, seed, classes) for seed in range(draws)] for name, f, n in wanted}


def subset(images: ImageSet, indices: Tensor) -> ImageSet:
    """The images (with their labels, class names and paths) at ``indices``."""
    return images.subset(torch.as_tensor(indices, dtype=torch.long))
