"""Checkpoints: written atomically (temp file + rename), recognised by a format tag, loaded back exactly, and
read with torch's safe loader (tensors and plain containers only: a checkpoint never runs code)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from selfsup.errors import UserError

FORMAT = "selfsup-checkpoint"
VERSION = 1
FILENAME = "checkpoint.pt"


#: what every checkpoint holds (a resumable one also: optimizers or optimizer, baseline, train_seconds)
REQUIRED = ("config", "step", "state", "image_size", "num_classes")
TEMP_PREFIX = f".{FILENAME}.tmp"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` so that a crash at any moment leaves the previous file intact. A write that
    fails (a full disk, a read-only folder) removes its temporary file and raises a UserError; the previous
    checkpoint is left as it was."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        needed = max(written, path.stat().st_size if path.exists() else 0)
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else needed
        if free < needed + (1 << 20):  # torch's zip writer says "unexpected pos" where the disk is full
            reason = f"No space left on the device ({free / 2**20:.1f} MB free, a checkpoint takes " \
                     f"{needed / 2**20:.1f} MB)"
        kept = "the previous checkpoint is intact" if path.exists() else "no checkpoint was written"
        raise UserError(f"cannot write the checkpoint '{path}': {reason}; {kept}") from None


def remove_partial_writes(folder: Path) -> None:
    """Delete temporary checkpoint files that a killed run left behind (call with the run folder locked)."""
    for tmp in folder.glob(f"{TEMP_PREFIX}*"):
        tmp.unlink(missing_ok=True)


class CheckpointWriter:
    """Atomic checkpoint writes in a background thread, so that training goes on while the file is written.

    :meth:`save` costs the caller one copy of the payload's tensors into host buffers (pinned when they come
    from a GPU, reused from one checkpoint to the next): later steps cannot change what is written. The
    serialisation, the write and the fsync run in the thread, with :func:`save_checkpoint`'s guarantee that
    a crash at any moment leaves the previous file intact. One write at a time: :meth:`save` first waits for
    the one before. :meth:`wait` returns once the last write is on disk and raises its error, if any; call it
    before reading the file or ending the run.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._buffers: list[torch.Tensor] = []

    def save(self, path: Path, payload: dict[str, Any]) -> None:
        self.wait()  # the buffers are free again
        tensors: list[torch.Tensor] = []
        _map_tensors(payload, tensors.append)
        on_gpu = any(t.is_cuda for t in tensors)
        if [(t.shape, t.dtype) for t in tensors] != [(b.shape, b.dtype) for b in self._buffers]:
            self._buffers = [torch.empty(t.shape, dtype=t.dtype, pin_memory=on_gpu) for t in tensors]
        for buffer, t in zip(self._buffers, tensors, strict=True):
            buffer.copy_(t.detach(), non_blocking=t.is_cuda)  # synchronised below
        if on_gpu:
            torch.cuda.synchronize()  # the copies have landed before the thread reads them
        buffers = iter(self._buffers)
        snapshot = _map_tensors(payload, lambda _: next(buffers))
        self._thread = threading.Thread(target=self._write, args=(path, snapshot), name="selfsup-checkpoint")
        self._thread.start()

    def _write(self, path: Path, payload: dict[str, Any]) -> None:
        try:
            save_checkpoint(path, payload)
        except BaseException as e:  # noqa: BLE001 - handed to the training thread by wait()
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _map_tensors(x: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``x`` (nested dicts, lists and tuples) rebuilt with ``fn(t)`` for every tensor ``t``, visited in a
    fixed order."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, dict):
        return {k: _map_tensors(v, fn) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_map_tensors(v, fn) for v in x)
    return x


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / FILENAME
    if not p.is_file():
        raise UserError(f"no checkpoint at '{path}'")
    return p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one of our checkpoints with torch's safe loader (``weights_only``: tensors, numbers, strings and
    containers; no object is constructed, no code runs); anything else is refused with one clear line."""
    p = resolve_checkpoint(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - an unreadable file, or one that asks to run code: the same refusal
        raise UserError(f"'{p}' is not a selfsup checkpoint (cannot be read safely: {type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"'{p}' is not a selfsup checkpoint")
    if not isinstance(ckpt.get("version"), int) or ckpt["version"] > VERSION:
        raise UserError(f"'{p}' was written by a newer selfsup (format version {ckpt.get('version')})")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing or not isinstance(ckpt["config"], dict) or not isinstance(ckpt["state"], dict):
        raise UserError(f"'{p}' is a damaged selfsup checkpoint (missing or malformed: "
                        f"{', '.join(missing) or 'config or state'})")
    return ckpt
