"""``selfsup views``: one picture of exactly what a method's network sees and must predict, for a few images, so
that a pretext task can be checked by eye before hours are spent training it."""

from __future__ import annotations

from pathlib import Path

import torch

from selfsup.config import TrainConfig
from selfsup.data import load_data
from selfsup.data.ops.base import resize
from selfsup.data.sources import Dataset
from selfsup.engine.batches import epoch_order, seed_for
from selfsup.engine.build import build_method, resolve_config
from selfsup.engine.epoch import Epoch
from selfsup.errors import UserError
from selfsup.evaluate.pictures import draw_panels
from selfsup.methods import Batch
from selfsup.methods.panels import Panel

MAX_COUNT = 32


def method_views(cfg: TrainConfig, count: int = 8, data: Dataset | None = None) -> tuple[list[Panel], TrainConfig]:
    """The method of ``cfg`` built as ``selfsup train`` builds it (same seed, epoch 0's ``on_epoch_start`` on the
    whole pretraining set), the first ``count`` images of its first epoch's order as a batch, and the panels its
    :meth:`~selfsup.methods.base.Method.views` makes of them: the originals first. Also the resolved config."""
    if not 2 <= count <= MAX_COUNT:
        raise UserError(f"views shows 2 to {MAX_COUNT} images (got --count {count})")
    data = data or load_data(cfg.data, cfg.image_size, cfg.download)
    cfg = resolve_config(cfg, data)
    pretrain = data.pretrain
    if len(pretrain) < count:
        raise UserError(f"views needs at least {count} images; the data has {len(pretrain)}")
    method = build_method(cfg, cfg.image_size, data.num_classes, num_samples=len(pretrain)).eval()
    epoch = Epoch(0, pretrain.images, method, {}, torch.device("cpu"), cfg.seed, pretrain.fields)
    method.on_epoch_start(epoch)
    idx = epoch_order(len(pretrain), cfg.seed, 0, epoch.weights)[:count]
    images = pretrain.images[idx]
    labels = None if pretrain.labels is None else pretrain.labels[idx]
    batch = Batch(images, labels, idx, torch.Generator().manual_seed(seed_for("augment", cfg.seed, 0)), 0.0,
                  fields={k: v[idx] for k, v in pretrain.fields.items()})
    with torch.no_grad():
        panels = method.views(batch)
    names = [pretrain.classes[i] for i in labels.tolist()] if labels is not None and pretrain.classes else None
    original = Panel(f"the images ({cfg.data}, {cfg.image_size} px)", resize(images, cfg.image_size), names)
    return [original, *panels], cfg


def save_views(cfg: TrainConfig, out: str | Path, count: int = 8, data: Dataset | None = None) -> Path:
    """Write ``selfsup views``' picture for the method of ``cfg`` to ``out`` (PNG); returns the path."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"views writes a PNG picture; --out must end in .png (got '{out}')")
    panels, cfg = method_views(cfg, count, data)
    args = ", ".join(f"{k}={v}" for k, v in cfg.method_args.items())
    picture = draw_panels(panels, f"selfsup views {cfg.method}{f' ({args})' if args else ''}: what the network sees "
                                  "and must predict")
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    return out
