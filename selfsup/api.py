"""The Python API: ``selfsup.pretrain(...)`` is ``selfsup train`` in one call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from selfsup.config import config_from_dict
from selfsup.engine.trainer import Run, train


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
