"""The evaluation protocol: kNN, linear probe and per-layer probes on frozen features.

Every function takes any backbone ``nn.Module`` and two labeled :class:`~selfsup.data.ImageSet`
splits, e.g. ``selfsup.evaluate.knn(run.encoder, data.train, data.test)``; images are resized to the size the
encoder was trained at (or ``image_size``); on clips (a ``frames`` field) ``frames=`` probes several frames side by
side. :func:`finetune` trains the whole network with a new head, and
:func:`few_label` scores probes (and fine-tuning) on class-balanced subsets of the train labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from selfsup.backbones import stage_names
from selfsup.data.sources import ImageSet
from selfsup.errors import UserError
from selfsup.evaluate.features import MAX_STAGE_DIM, extract_features
from selfsup.evaluate.finetune import finetune
from selfsup.evaluate.knn import knn_top1
from selfsup.evaluate.linear import linear_top1
from selfsup.evaluate.subsets import few_label_indices, few_label_subsets, subset

__all__ = ["extract_features", "few_label", "few_label_indices", "few_label_subsets", "finetune", "knn", "knn_top1",
           "layers", "linear", "linear_top1", "probe", "probed_frames", "scores", "subset", "trained_size"]


def trained_size(encoder: nn.Module) -> int | None:
    """The image size a selfsup-trained encoder was trained at (``run.encoder``, ``run.backbone``, a loaded
    checkpoint's); None for a module selfsup did not train."""
    size = getattr(encoder, "image_size", None)
    return size if isinstance(size, int) else None


def probed_frames(images: ImageSet, frames: Sequence[int] | str) -> list[torch.Tensor]:
    """The frames ``frames`` (indices into each clip, or ``"all"``) of every clip of ``images``' ``frames`` field
    ``(N, T, 3, H, W)``, one ``(N, 3, H, W)`` tensor per index."""
    if "frames" not in images.fields:
        raise UserError("a probe over frames needs clips (a 'frames' field: a video folder, moving-objects)")
    clips = images.fields["frames"]
    t = clips.shape[1]
    idx = list(range(t)) if frames == "all" else list(frames)
    if not idx or not all(-t <= i < t for i in idx):
        raise UserError(f"frames {frames} are not indices into clips of {t} frames")
    return [clips[:, i] for i in idx]


def _features(backbone: nn.Module, train: ImageSet, test: ImageSet, image_size: int | None,
              device: str | torch.device | None, stages: bool = False, max_dim: int = MAX_STAGE_DIM,
              frames: Sequence[int] | str | None = None):
    """Frozen features of both splits at ``image_size`` (default: the size the encoder was trained at, else the
    images' own); with ``frames``, the features of those frames of each clip side by side (frame order kept)."""
    size = image_size or trained_size(backbone) or int(train.images.shape[-1])
    if frames is not None:
        return tuple(torch.cat([extract_features(backbone, f, size, device=device) for f in probed_frames(s, frames)],
                               1) for s in (train, test))
    return tuple(extract_features(backbone, s.images, size, device=device, stages=stages, max_dim=max_dim)
                 for s in (train, test))


def probe(backbone: nn.Module, train: ImageSet, test: ImageSet, *, image_size: int | None = None,
          device: str | torch.device | None = None, k: int = 200, temperature: float = 0.1,
          frames: Sequence[int] | str | None = None) -> dict[str, float]:
    """kNN and linear-probe top-1 from one feature extraction: ``{"knn_top1": .., "linear_top1": ..}``. With
    ``frames`` (indices, or ``"all"``) the probes see those frames of each clip side by side: what changes over
    time (motion) shows there, not in one frame."""
    ftr, fte = _features(backbone, train, test, image_size, device, frames=frames)
    return scores(ftr, train.labels, fte, test.labels, k, temperature)


def scores(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
           test_labels: torch.Tensor, k: int = 200, temperature: float = 0.1) -> dict[str, float]:
    """kNN and linear-probe top-1 of features already extracted."""
    return {"knn_top1": knn_top1(train_feats, train_labels, test_feats, test_labels, k, temperature),
            "linear_top1": linear_top1(train_feats, train_labels, test_feats, test_labels)}


def knn(backbone: nn.Module, train: ImageSet, test: ImageSet, *, image_size: int | None = None,
        device: str | torch.device | None = None, k: int = 200, temperature: float = 0.1,
        frames: Sequence[int] | str | None = None) -> float:
    """kNN top-1 (k=200, votes weighted by exp(sim / 0.1)) of frozen backbone features (``frames``: see
    :func:`probe`)."""
    ftr, fte = _features(backbone, train, test, image_size, device, frames=frames)
    return knn_top1(ftr, train.labels, fte, test.labels, k, temperature)


def linear(backbone: nn.Module, train: ImageSet, test: ImageSet, *, image_size: int | None = None,
           device: str | torch.device | None = None, frames: Sequence[int] | str | None = None) -> float:
    """Linear-probe top-1 of frozen backbone features (``frames``: see :func:`probe`)."""
    ftr, fte = _features(backbone, train, test, image_size, device, frames=frames)
    return linear_top1(ftr, train.labels, fte, test.labels)


def layers(backbone: nn.Module, train: ImageSet, test: ImageSet, *, image_size: int | None = None,
           device: str | torch.device | None = None, max_dim: int = MAX_STAGE_DIM,
           progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Linear-probe top-1 on every stage's output (the seeds' per-layer table), each map average-pooled to s x s
    with ``C * s * s <= max_dim`` values (as the papers pool conv layers for their per-layer probes; 2048 by
    default keeps a CPU probe of every stage to minutes). ``progress`` gets a line per stage."""
    ftr, fte = _features(backbone, train, test, image_size, device, stages=True, max_dim=max_dim)
    out = {}
    for name, a, b in zip(stage_names(backbone), ftr, fte):
        if progress:
            progress(f"linear probe on {name} ({a.shape[1]} features)")
        out[name] = linear_top1(a, train.labels, b, test.labels)
    return out


def few_label(backbone: nn.Module, train: ImageSet, test: ImageSet, *, fractions: Sequence[float] | None = None,
              per_class: int | None = None, draws: int = 3, finetune_args: dict | None = None,
              image_size: int | None = None, device: str | torch.device | None = None, k: int = 200,
              temperature: float = 0.1, progress: Callable[[str], None] | None = None) -> dict[str, dict[str, list]]:
    """The semi-supervised view (Zhai et al., ICCV 2019; Chen et al., ICML 2020): kNN and linear-probe top-1 on the
    whole test split of classifiers trained on class-balanced subsets of the train split (each class's ``fractions``,
    default 1% and 10%, or ``per_class`` images), one subset per draw (seeds ``0 .. draws - 1``); with
    ``finetune_args`` (a dict of :func:`finetune` options, ``{}`` for its defaults) also fine-tuning on each.
    Returns ``{"1%": {"knn_top1": [a score per draw], "linear_top1": [...], ("finetune_top1": [...])}, ...}``."""
    if not (train.labeled and test.labeled):
        raise UserError("few-label evaluation needs labeled train and test images")
    subsets = few_label_subsets(train.labels, fractions, per_class, draws, train.classes)
    ftr, fte = _features(backbone, train, test, image_size, device)
    out: dict[str, dict[str, list]] = {}
    for name, draws_of in subsets.items():
        res = out[name] = {"knn_top1": [], "linear_top1": []} | ({} if finetune_args is None else {"finetune_top1": []})
        for seed, idx in enumerate(draws_of):
            if progress:
                progress(f"{name}: {len(idx)} labeled images, draw {seed + 1} of {draws}")
            for key, v in scores(ftr[idx], train.labels[idx], fte, test.labels, k, temperature).items():
                res[key].append(v)
            if finetune_args is not None:
                res["finetune_top1"].append(finetune(backbone, subset(train, idx), test, image_size=image_size,
                                                     device=device, seed=seed, **finetune_args)["top1"])
    return out
