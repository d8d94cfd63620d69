"""The Python API: ``selfsup.pretrain(...)`` is ``selfsup train`` in one call; ``selfsup.export(...)`` and
``selfsup.retrieve(...)`` are ``selfsup export`` and ``selfsup retrieve``, taking a run, a run folder or
checkpoint, or a module."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.config import config_from_dict
from selfsup.data.sources import ImageSet
from selfsup.engine.build import method_from_checkpoint
from selfsup.engine.trainer import Run, train
from selfsup.errors import UserError
from selfsup.evaluate.neighbours import Neighbours
from selfsup.use import output_file
from selfsup.use.export import export as export_encoder
from selfsup.use.retrieve import retrieval_outputs, save_retrieval
from selfsup.use.retrieve import retrieve as retrieve_neighbours


def pretrain(method: str = "simclr", data: str = "digits", backbone: str | nn.Module | None = None, *,
             steps: int | None = None, epochs: int | None = None, batch_size: int = 256, lr: float | None = None,
             device: str = "auto", seed: int = 0, out: str | Path | None = None, overwrite: bool = False,
             evaluate: bool = True, progress: bool = True, **options: Any) -> Run:
    """Pretrain ``method`` on ``data`` and return the :class:`Run` (``run.backbone``, ``run.metrics``).

    ``backbone`` is a registered name or any ``nn.Module`` mapping images to ``(batch, features)`` (default: the
    method's, the small convnet for most).
    Other keyword arguments are config keys (``image_size``, ``weight_decay``, ``method_args``, ...).

    Example::

        run = selfsup.pretrain("simclr", data="digits", steps=500, device="cpu", out="runs/a")
        selfsup.evaluate.knn(run.backbone, run.data.train, run.data.test)
    """
    name = backbone if backbone is None or isinstance(backbone, str) else f"custom:{type(backbone).__name__}"
    cfg = config_from_dict(dict(method=method, data=data, backbone=name, steps=steps, epochs=epochs,
                                batch_size=batch_size, lr=lr, device=device, seed=seed, **options), "pretrain()")
    module = None if backbone is None or isinstance(backbone, str) else backbone
    return train(cfg, out, overwrite=overwrite, backbone=module, evaluate=evaluate, show_progress=progress)


def _encoder(model: Run | nn.Module | str | os.PathLike) -> tuple[nn.Module, int | None]:
    """The encoder that evaluation uses, and the image side it was trained at (None for a bare module)."""
    if isinstance(model, Run):
        return model.encoder, model.method.image_size
    if isinstance(model, nn.Module):
        return model, None
    if isinstance(model, (str, os.PathLike)):
        method, ckpt = method_from_checkpoint(model)
        return method.encoder(), ckpt["image_size"]
    raise UserError(f"model must be a Run, a run folder or checkpoint.pt, or an nn.Module (got {type(model).__name__})")


def _device(device: str | torch.device | None, module: nn.Module) -> torch.device:
    """None: where ``module`` is; ``"auto"``: the GPU when there is one."""
    if device is None:
        return next(module.parameters()).device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={str(device)!r} was asked for, but no CUDA GPU is available")
    return device


def export(model: Run | nn.Module | str | os.PathLike, format: str, out: str | Path,
           image_size: int | None = None) -> str:
    """Save the encoder alone, loadable without selfsup: ``format`` is ``"torchvision"`` or ``"timm"`` (a
    ResNet state dict for ``torchvision.models.resnet18/50`` or the timm model) or ``"onnx"`` (a graph
    ``images -> features``, every encoder; needs ``pip install "selfsup[export]"``). ``selfsup export`` in one call.

    ``model``: a :class:`Run`, a run folder or checkpoint.pt, or an ``nn.Module`` (then ``image_size``, the
    side it was trained at, is needed). Returns the text that says how to load it and resize images for it.

    Example::

        print(selfsup.export("runs/a", "torchvision", "backbone.pt"))
    """
    encoder, trained_size = _encoder(model)
    image_size = image_size or trained_size
    if image_size is None:
        raise UserError("export() of a module needs image_size: the side of the images it was trained on")
    return export_encoder(encoder, format, output_file(out), image_size)


def retrieve(model: Run | nn.Module | str | os.PathLike, data: str | Path | ImageSet, query: str | Path | ImageSet,
             k: int = 8, *, out: str | Path | None = None, image_size: int | None = None, batch_size: int = 256,
             device: str | torch.device | None = "auto", include_self: bool = False, cache: bool = True,
             progress: bool = False) -> Neighbours:
    """The ``k`` nearest images of ``data`` for every image of ``query``, by cosine similarity of the encoder's
    features centred on the mean of ``data``'s (unrelated images score about 0, identical ones 1).
    ``selfsup retrieve`` in one call.

    ``model``: a :class:`Run`, a run folder or checkpoint.pt, or an ``nn.Module``. ``data``: a folder of images,
    an ImageSet, or a file that ``selfsup embed`` / :func:`selfsup.embed` wrote with the same encoder (nothing
    of it is embedded again); a folder's embeddings are cached, so the next query against it embeds the query
    alone (``cache=False``: not). ``query``: one image, a folder or an ImageSet. An image of ``data`` that is
    the query itself (the same file, or the same pixels) is left out unless ``include_self``. ``image_size``:
    default the side the run was trained at (a module: the images' own). ``out``: also draw the neighbours into
    this picture (.png, .jpg, .pdf, .svg) and list them in a CSV beside it. ``device``: ``"auto"`` (the GPU
    when there is one), ``"cpu"``, ``"cuda"``, or None (where the module is).

    Returns :class:`~selfsup.evaluate.neighbours.Neighbours` (``.similarity`` and ``.positions``, ``(Q, k)``).

    Example::

        nb = selfsup.retrieve("runs/a", "photos/", "query.jpg", k=5, out="neighbours.png")
    """
    encoder, trained_size = _encoder(model)
    outputs = retrieval_outputs(out) if out is not None else None
    nb = retrieve_neighbours(encoder, data, query, k, image_size or trained_size, batch_size,
                             _device(device, encoder), progress, include_self, cache)
    if outputs is not None:
        save_retrieval(nb, *outputs, title=None if isinstance(data, ImageSet) else
                       f"nearest neighbours in {Path(data).name}")
    return nb
