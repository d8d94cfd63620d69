"""Files beside an image that describe it: ``photo.jpg`` with ``photo.txt`` (its caption, the field ``text``) and
``photo.npy`` (a numeric array, e.g. a topic vector: the float32 field ``vector``), in any folder layout.

When any image has a caption the set gets ``text``: images without one get an empty caption, counted and
reported once. ``vector`` needs an array of one shape beside every image; otherwise the set has no ``vector``,
said once with an example. Caption and vector files without an image of their name are skipped, counted and
reported once (an unreadable image takes its files with it, reported with the unreadable images). Captions are
read as UTF-8 (undecodable bytes replaced) without the whitespace around them, cut to
:data:`~selfsup.data.text.TEXT_LENGTH` bytes.
"""

from __future__ import annotations

import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from selfsup.data.shards import BrokenPart, read_array
from selfsup.data.stream import printable
from selfsup.data.text import TEXT_LENGTH, encode_texts

CAPTION, VECTOR = ".txt", ".npy"


def _caption(path: Path) -> str | None:
    """A caption file's text (its first 64 KiB: far more than a caption keeps), or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(1 << 16).decode("utf-8", "replace").strip()
    except OSError:
        return None


def _vector(path: Path) -> np.ndarray | str:
    """An ``.npy`` file's numbers (float32), or why they cannot be read."""
    try:
        return read_array(path)
    except BrokenPart as e:
        return f"its {VECTOR} {e}"


def _beside(folder: Path) -> dict[tuple[Path, str], Path]:
    """Every caption and vector file under ``folder``, by (path without suffix, suffix)."""
    return {(p.with_suffix(""), p.suffix.lower()): p for p in folder.rglob("*")
            if p.suffix.lower() in (CAPTION, VECTOR) and p.is_file()}


def _read_all(fn, paths: list[Path]) -> list:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(fn, paths))


def sidecar_fields(images: list[Path], found: list[Path], folder: Path,
                   length: int = TEXT_LENGTH) -> dict[str, torch.Tensor]:
    """The fields of ``images`` (in their order) from the files beside them: ``text`` ``(N, length)`` uint8 and
    ``vector`` ``(N, ...)`` float32 (see the module's docstring). ``found``: every image file found under
    ``folder`` (kept or not); caption and vector files under ``folder`` of none of them are reported."""
    files = _beside(folder)
    if not files:
        return {}
    named = {p.with_suffix("") for p in found}
    orphans = sorted(p for (stem, _), p in files.items() if stem not in named)
    if orphans:
        print(f"warning: skipped {len(orphans)} caption or vector file(s) without an image of their name in "
              f"'{printable(folder)}', e.g. {printable(orphans[0])}", file=sys.stderr)
    fields: dict[str, torch.Tensor] = {}
    captions = [files.get((p.with_suffix(""), CAPTION)) for p in images]
    if any(captions):
        texts = _read_all(lambda p: None if p is None else _caption(p), captions)
        missing = [p for p, t in zip(images, texts, strict=True) if t is None]
        if missing:
            print(f"note: {len(missing)} image(s) in '{printable(folder)}' have no caption (no readable "
                  f"{CAPTION} beside them), so theirs is empty, e.g. {printable(missing[0])}", file=sys.stderr)
        fields["text"] = encode_texts(["" if t is None else t for t in texts], length)
    vectors = [files.get((p.with_suffix(""), VECTOR)) for p in images]
    if any(vectors):
        arrays = _read_all(lambda p: f"no {VECTOR} beside it" if p is None else _vector(p), vectors)
        shapes = Counter(a.shape for a in arrays if not isinstance(a, str))
        common = shapes.most_common(1)[0][0] if shapes else None
        why = next(((p, a if isinstance(a, str) else f"shape {a.shape}, where most have {common}")
                    for p, a in zip(images, arrays, strict=True) if isinstance(a, str) or a.shape != common), None)
        if why is None:
            fields["vector"] = torch.from_numpy(np.stack(arrays))
        else:
            print(f"warning: not every image in '{printable(folder)}' has a vector of one shape, so the set has "
                  f"none: e.g. {printable(why[0])}: {why[1]}", file=sys.stderr)
    return fields
