"""Checkpoints: written atomically (temp file + rename), recognised by a format tag, loaded back exactly."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from selfsup.errors import UserError

FORMAT = "selfsup-checkpoint"
VERSION = 1
FILENAME = "checkpoint.pt"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` so that a crash at any moment leaves the previous file intact."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / FILENAME
    if not p.is_file():
        raise UserError(f"no checkpoint at '{path}'")
    return p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one of our checkpoints; anything else is refused with a clear message."""
    p = resolve_checkpoint(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise UserError(f"'{p}' is not a selfsup checkpoint (cannot be read: {type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"'{p}' is not a selfsup checkpoint")
    if ckpt.get("version", 0) > VERSION:
        raise UserError(f"'{p}' was written by a newer selfsup (format version {ckpt['version']})")
    return ckpt
