"""Image sets too large for memory: decoded on demand by DataLoader workers, batched uint8 to the device.

Two sources, both looking like a uint8 tensor ``(N, 3, S, S)`` to the rest of the library:

* :class:`FileImages` -- a folder of (large) image files. Workers decode each file, resize its shorter
  side to ``S`` and centre-crop it square (JPEGs are decoded at reduced scale when they are much larger,
  with Pillow's draft mode); everything else (random resized crops, colour, ...) runs batched on the device.
* :class:`ShardImages` -- WebDataset-style tar shards, ``wds:/data/shard-{000000..000099}.tar``: each
  sample is an image member (``.jpg``, ``.png``, ...) with optional ``.cls`` (its integer label), ``.txt``
  (caption), ``.json`` (label and numeric fields) and ``.npy`` (vector) members, grouped by the part of the
  member name before the first dot (see :mod:`selfsup.data.shards`). Members larger than
  ``$SELFSUP_MAX_MEMBER_MB`` (default 64) are skipped unread and reported; a ``.cls`` that is not a
  non-negative integer is a one-line error naming the shard and the sample. Every rank reads its own shards,
  and the DataLoader workers of a rank split those again, so no byte is read twice; each worker mixes its
  samples through a seeded shuffle buffer. :func:`write_shards` makes such shards from a folder, in a
  shuffled order (``selfsup shards``).

Every image becomes 8-bit RGB by scaling, never clipping (16-bit values / 257); an image that cannot be read,
or one with more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb), is left blank in its batch
and reported on one line.

The trainer asks either for the batches of one epoch with :meth:`batches`, which yields
``(indices, uint8 images, labels or None)`` ready for pinned, non-blocking copies, and a 4th item, the dict of
the samples' fields stacked (:attr:`ImageSet.fields <selfsup.data.sources.ImageSet.fields>`), when they have
fields (a caption folder's ``text``, a shard's ``.txt`` / ``.json`` / ``.npy``), decoded by
:func:`decode_workers` DataLoader workers (by default the cores available, never more).
"""

from __future__ import annotations

import io
import os
import re
import sys
import tarfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from selfsup.data.shards import Sample, fitted, index_shards, max_member_bytes, read_samples
from selfsup.errors import UserError

SHUFFLE_BUFFER = 1000  # samples (encoded bytes) each DataLoader worker shuffles a streamed shard through
MAX_DEFAULT_WORKERS = 16  # decode workers a process starts by default, at most (each holds a prefetch queue)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the OS has one; else all of them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_workers(asked: int | None = None) -> int:
    """DataLoader workers that decode streamed images: ``asked`` (0: decode in the main process), or by default
    the cores available to this process shared among the processes torchrun starts on this machine
    (``$LOCAL_WORLD_SIZE``), at most :data:`MAX_DEFAULT_WORKERS`; never more than the cores available, since
    more processes than cores only wait for each other (and torch warns into the progress bar)."""
    cores = available_cores()
    if asked is None:
        asked = min(MAX_DEFAULT_WORKERS, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    return min(asked, cores)


class UnreadableImage(Exception):
    """An image that cannot be decoded; the message says why."""


def printable(path: str | os.PathLike) -> str:
    """``path`` safe to print or write as UTF-8: the bytes of a file name that is not UTF-8 (which Python keeps
    as surrogate escapes) are shown as ``\\xff``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB by scaling, never clipping: 16-bit grey (``I;16``) values / 257; 32-bit integers (``I``, as
    which Pillow opens 16-bit PGM and TIFF) / 257 too, or by their maximum when it is over 65535; floats (``F``)
    x 255 when they lie in [0, 1], else as ``I``; negative values become 0. Palette, grey + alpha, CMYK, ... go
    through Pillow's conversion (alpha dropped); Pillow itself reads 16-bit RGB(A) PNGs as their high byte."""
    if im.mode.startswith("I") or im.mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = float(values.max(initial=0.0))
        full = max(top, 1.0 if im.mode == "F" and top <= 1 else 65535.0)
        im = Image.fromarray(np.rint(np.clip(values, 0, None) * (255 / full)).astype(np.uint8))
    return im.convert("RGB")


def decode_square(data: bytes | str | Path, size: int, draft: bool = True) -> np.ndarray:
    """RGB uint8 ``(3, size, size)``: shorter side resized to ``size``, centre crop (colours by :func:`to_rgb`).

    Raises :class:`UnreadableImage` for a file Pillow cannot read and for one with more pixels than
    ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow's guard against decompression bombs; raise it to read such images).
    With ``draft``, large JPEGs are first decoded at the smallest power-of-two reduction still at least ``size``
    on the shorter side (libjpeg's DCT scaling), which is several times faster than a full decode.
    """
    limit = Image.MAX_IMAGE_PIXELS
    too_large = f"more pixels than PIL.Image.MAX_IMAGE_PIXELS ({limit}) allows (a decompression bomb?)"
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            w, h = im.size
            if limit is not None and w * h > limit:
                raise UnreadableImage(f"{w}x{h}: {too_large}")
            if draft:
                im.draft("RGB", (max(size, round(size * w / min(w, h))), max(size, round(size * h / min(w, h)))))
            im = to_rgb(im)
            w, h = im.size
            scale = size / min(w, h)
            im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
            left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
            return np.ascontiguousarray(np.asarray(im.crop((left, top, left + size, top + size))).transpose(2, 0, 1))
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnreadableImage(too_large) from None
    except Image.UnidentifiedImageError:
        raise UnreadableImage("not an image format Pillow knows, or a broken header") from None
    except Exception as e:  # noqa: BLE001 - whatever a decoder raises on a broken file means "unreadable"
        raise UnreadableImage(printable(str(e)) or type(e).__name__) from None


def _blank(name: str, reason: str, size: int) -> np.ndarray:
    """The stand-in for an unreadable image in a streamed batch, reported on one line."""
    print(f"warning: unreadable image {printable(name)} (left blank in its batch): {reason}", file=sys.stderr)
    return np.zeros((3, size, size), np.uint8)


class _Lazy:
    """Shared behaviour: a shape like a uint8 tensor, and random access through a thread pool."""

    size: int

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 3, self.size, self.size)

    def load(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, idx: int | slice | torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Decode the given images (a thread pool; Pillow releases the GIL) as a uint8 batch."""
        if isinstance(idx, int):
            return torch.from_numpy(self.load(idx))
        rows = range(len(self))[idx] if isinstance(idx, slice) else [int(i) for i in idx]
        with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
            arrays = list(pool.map(self.load, rows))
        return torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros((0, 3, self.size, self.size),
                                                                             dtype=torch.uint8)


class FileImages(_Lazy, torch.utils.data.Dataset):
    """Image files decoded on demand to ``(3, size, size)`` uint8, with their other ``fields`` held in memory
    (``(N, ...)`` tensors, e.g. captions read from files beside the images)."""

    def __init__(self, paths: Sequence[str | Path], size: int, fields: dict[str, torch.Tensor] | None = None) -> None:
        self.paths = [str(p) for p in paths]
        self.size = size
        self.fields = fields or {}

    def subset(self, idx: torch.Tensor) -> FileImages:
        return FileImages([self.paths[i] for i in idx.tolist()], self.size, {k: v[idx] for k, v in self.fields.items()})

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> np.ndarray:
        try:
            return decode_square(self.paths[i], self.size)
        except UnreadableImage as e:
            return _blank(self.paths[i], str(e), self.size)

    def batches(self, order: torch.Tensor, start: int, batch: int, workers: int | None, pin: bool,
                labels: torch.Tensor | None = None) -> Iterator[tuple]:
        """This epoch's batches from position ``start`` on: ``order`` already holds this rank's indices in
        step order, ``batch`` of them per step. Workers (:func:`decode_workers`) decode; the main process only
        copies (and slices the fields)."""
        workers = decode_workers(workers)
        chunks = [order[i : i + batch].tolist() for i in range(start * batch, len(order) - batch + 1, batch)]
        loader = DataLoader(self, batch_sampler=chunks, num_workers=workers, pin_memory=pin,
                            prefetch_factor=4 if workers else None, collate_fn=_stack)
        for rows, images in zip(chunks, loader, strict=True):
            idx = torch.tensor(rows)
            fields = {k: v[idx] for k, v in self.fields.items()}
            yield idx, images, None if labels is None else labels[idx], *([fields] if fields else [])


def _stack(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays))


# ----------------------------------------------------------------------------------------- tar shards


def expand_braces(pattern: str) -> list[str]:
    """``shard-{000..002}.tar`` -> shard-000.tar, shard-001.tar, shard-002.tar (zero padding kept)."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo) if lo.startswith("0") else 0
    return [p for i in range(int(lo), int(hi) + 1)
            for p in expand_braces(pattern[: m.start()] + str(i).zfill(width) + pattern[m.end():])]


class ShardImages(_Lazy, IterableDataset):
    """Tar shards of images (WebDataset layout), streamed, with their samples' fields (``schema``: a zero
    template of each, see :mod:`selfsup.data.shards`). ``len`` comes from one pass over the members (images
    unread)."""

    def __init__(self, pattern: str, size: int, max_member: int | None = None) -> None:
        """``max_member``: members larger than this many bytes are skipped unread, and their samples counted in
        ``skipped`` and reported on one line (default :func:`max_member_bytes`); so are samples with a missing
        or unreadable part."""
        self.shards = expand_braces(pattern)
        missing = [s for s in self.shards if not Path(s).is_file()]
        if missing:
            raise UserError(f"shard '{printable(missing[0])}' does not exist ({len(missing)} of {len(self.shards)} "
                            "missing)")
        self.size = size
        self.max_member = max_member_bytes() if max_member is None else max_member
        index = index_shards(self.shards, self.max_member)
        self.skipped, self.dropped, self.schema = index.skipped, index.dropped, index.schema
        self.offsets = np.concatenate([[0], np.cumsum(index.counts)]).astype(np.int64)
        labels = index.labels
        self.labels = torch.tensor(labels, dtype=torch.long) if labels and None not in labels else None
        self._plan: list[int] = []
        self._seed = 0

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def load(self, i: int) -> np.ndarray:
        """Random access (evaluation): reads the shard that holds sample ``i`` up to it."""
        shard = int(np.searchsorted(self.offsets, i, side="right") - 1)
        samples = self._kept(shard)
        for _ in range(i - int(self.offsets[shard])):
            next(samples)
        return self._decoded(i, next(samples), self.shards[shard])[1]

    def _kept(self, shard: int) -> Iterator[Sample]:
        """The samples of shard number ``shard`` that the index kept, in file order."""
        return (x for x in read_samples(self.shards[shard], self.max_member)
                if x.has_image and x.key not in self.dropped[shard])

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, dict[str, torch.Tensor]]]:
        """This worker's shards in turn, through a shuffle buffer of ``SHUFFLE_BUFFER`` encoded samples (seeded
        by the epoch and the worker), so a batch mixes samples of several shards and differs every epoch."""
        info = get_worker_info()
        shards = self._plan[info.id :: info.num_workers] if info else self._plan
        rng = np.random.default_rng([self._seed, info.id if info else 0])
        buffer: list[tuple[int, Sample, str]] = []
        for item in self._encoded(shards):
            if len(buffer) < SHUFFLE_BUFFER:
                buffer.append(item)
                continue
            j = int(rng.integers(len(buffer)))
            buffer[j], item = item, buffer[j]
            yield self._decoded(*item)
        rng.shuffle(buffer)
        for item in buffer:
            yield self._decoded(*item)

    def _encoded(self, shards: list[int]) -> Iterator[tuple[int, Sample, str]]:
        for s in shards:
            for pos, sample in enumerate(self._kept(s), int(self.offsets[s])):
                yield pos, sample, self.shards[s]

    def _decoded(self, pos: int, sample: Sample, shard: str) -> tuple[int, np.ndarray, dict[str, torch.Tensor]]:
        fields = fitted(sample, shard, self.schema)
        try:
            return pos, decode_square(sample.image, self.size), fields
        except UnreadableImage as e:
            return pos, _blank(f"{sample.key} in {shard}", str(e), self.size), fields

    def batches(self, epoch_seed: int, rank: int, world: int, start: int, batch: int, workers: int | None,
                pin: bool) -> Iterator[tuple]:
        """One epoch: shards shuffled by ``epoch_seed``, dealt to ranks, then to this rank's workers
        (:func:`decode_workers`, at most one per shard); each worker streams its shards whole (sequential
        reads) through its shuffle buffer. Batches of ``batch``; the first ``start`` skipped. Each is
        ``(indices, images, labels or None)``, and the dict of its samples' fields when they have any."""
        perm = torch.randperm(len(self.shards), generator=torch.Generator().manual_seed(epoch_seed)).tolist()
        self._plan, self._seed = perm[rank::world], epoch_seed
        if not self._plan:
            raise UserError(f"{len(self.shards)} shard(s) cannot feed {world} processes; write more shards")
        workers = min(decode_workers(workers), len(self._plan))
        loader = DataLoader(self, batch_size=batch, num_workers=workers, pin_memory=pin, drop_last=True,
                            collate_fn=_collate_indexed, prefetch_factor=4 if workers else None)
        for step, (idx, images, fields) in enumerate(loader):
            if step >= start:
                yield idx, images, None if self.labels is None else self.labels[idx], *([fields] if fields else [])


def _collate_indexed(items: list[tuple[int, np.ndarray, dict[str, torch.Tensor]]]
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    return (torch.tensor([i for i, _, _ in items]), torch.from_numpy(np.stack([a for _, a, _ in items])),
            {k: torch.stack([f[k] for _, _, f in items]) for k in items[0][2]})


def write_shards(paths: Sequence[Path], labels: Sequence[int] | None, out_dir: Path, per_shard: int = 1000,
                 prefix: str = "shard", seed: int | None = 0, overwrite: bool = False) -> list[Path]:
    """Write images (their file bytes, unchanged) into tar shards of ``per_shard`` samples, each with a
    ``.cls`` label member when ``labels`` are given. Returns the shard paths (written atomically).

    The samples are shuffled first (by ``seed``; ``None`` keeps the given order): a folder lists its images
    class by class, and a stream can only mix samples within a few shards at a time. A folder that already
    holds ``PREFIX-*.tar`` shards is refused (old and new would mix), unless ``overwrite`` removes them first."""
    old = sorted(out_dir.glob(f"{prefix}-*.tar")) if out_dir.is_dir() else []
    if old and not overwrite:
        raise UserError(f"'{printable(out_dir)}' already holds {len(old)} shard(s) ({printable(old[0].name)}, ...); "
                        "remove them or choose an empty folder")
    for f in old:
        f.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    order = (list(range(len(paths))) if seed is None
             else torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist())
    shards = []
    for n, first in enumerate(range(0, len(paths), per_shard)):
        dest = out_dir / f"{prefix}-{n:06d}.tar"
        tmp = dest.with_suffix(".tar.tmp")
        with tarfile.open(tmp, "w") as tar:
            for pos in range(first, min(first + per_shard, len(paths))):
                i = order[pos]
                p = Path(paths[i])
                ext = p.suffix.lower().lstrip(".") or "jpg"
                tar.add(str(p), arcname=f"{pos:09d}.{ext}")
                if labels is not None:
                    data = str(int(labels[i])).encode()
                    info = tarfile.TarInfo(f"{pos:09d}.cls")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        tmp.replace(dest)
        shards.append(dest)
    return shards


def shard_spec(shards: Sequence[Path]) -> str:
    """The ``wds:`` SPEC that names these shards (as written by :func:`write_shards`)."""
    first, last = Path(shards[0]), Path(shards[-1])
    stem = first.stem.rsplit("-", 1)[0]
    lo, hi = first.stem.rsplit("-", 1)[1], last.stem.rsplit("-", 1)[1]
    name = f"{stem}-{lo}.tar" if lo == hi else f"{stem}-{{{lo}..{hi}}}.tar"
    return f"wds:{first.parent / name}"
