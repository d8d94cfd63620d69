"""Image sets too large for memory: decoded on demand by DataLoader workers, batched uint8 to the device.

Two sources, both looking like a uint8 tensor ``(N, 3, S, S)`` to the rest of the library:

* :class:`FileImages` -- a folder of (large) image files. Workers decode each file, resize its shorter
  side to ``S`` and centre-crop it square (JPEGs are decoded at reduced scale when they are much larger,
  with Pillow's draft mode); everything else (random resized crops, colour, ...) runs batched on the device.
* :class:`ShardImages` -- WebDataset-style tar shards, ``wds:/data/shard-{000000..000099}.tar``: each
  sample is an image member (``.jpg``, ``.png``, ...) and an optional ``.cls`` member with its integer
  label, grouped by the part of the member name before the first dot. Every rank reads its own shards,
  and the DataLoader workers of a rank split those again, so no byte is read twice; each worker mixes its
  samples through a seeded shuffle buffer. :func:`write_shards` makes such shards from a folder, in a
  shuffled order (``selfsup shards``).

The trainer asks either for the batches of one epoch with :meth:`batches`, which yields
``(indices, uint8 images, labels or None)`` ready for pinned, non-blocking copies.
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

from selfsup.errors import UserError

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "ppm")
SHUFFLE_BUFFER = 1000  # samples (encoded bytes) each DataLoader worker shuffles a streamed shard through


def decode_square(data: bytes | str | Path, size: int) -> np.ndarray | None:
    """RGB uint8 ``(3, size, size)``: shorter side resized to ``size``, centre crop; None if unreadable.

    Large JPEGs are first decoded at the smallest power-of-two reduction still at least ``size`` on the
    shorter side (libjpeg's DCT scaling), which is several times faster than a full decode.
    """
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            w, h = im.size
            im.draft("RGB", (max(size, round(size * w / min(w, h))), max(size, round(size * h / min(w, h)))))
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
            left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
            return np.ascontiguousarray(np.asarray(im.crop((left, top, left + size, top + size))).transpose(2, 0, 1))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _warn_unreadable(name: str) -> None:
    print(f"warning: unreadable image {name} (left blank in its batch)", file=sys.stderr)


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
    """Image files decoded on demand to ``(3, size, size)`` uint8."""

    def __init__(self, paths: Sequence[str | Path], size: int) -> None:
        self.paths = [str(p) for p in paths]
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> np.ndarray:
        out = decode_square(self.paths[i], self.size)
        if out is None:
            _warn_unreadable(self.paths[i])
            return np.zeros((3, self.size, self.size), np.uint8)
        return out

    def batches(self, order: torch.Tensor, start: int, batch: int, workers: int, pin: bool,
                labels: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """This epoch's batches from position ``start`` on: ``order`` already holds this rank's indices in
        step order, ``batch`` of them per step. Workers decode; the main process only copies."""
        chunks = [order[i : i + batch].tolist() for i in range(start * batch, len(order) - batch + 1, batch)]
        loader = DataLoader(self, batch_sampler=chunks, num_workers=workers, pin_memory=pin,
                            prefetch_factor=4 if workers else None, collate_fn=_stack)
        for rows, images in zip(chunks, loader, strict=True):
            idx = torch.tensor(rows)
            yield idx, images, None if labels is None else labels[idx]


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


def _samples(path: str) -> Iterator[tuple[str, bytes | None, int | None]]:
    """(key, image bytes, label) for every sample of one tar shard, in file order."""
    key, image, label = None, None, None
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, base = os.path.split(member.name)
            stem, _, ext = base.partition(".")
            k = os.path.join(folder, stem)
            if k != key:
                if key is not None:
                    yield key, image, label
                key, image, label = k, None, None
            data = tar.extractfile(member).read()
            if ext.lower() in IMAGE_SUFFIXES:
                image = data
            elif ext.lower() == "cls":
                label = int(data.decode().strip())
    if key is not None:
        yield key, image, label


class ShardImages(_Lazy, IterableDataset):
    """Tar shards of images (WebDataset layout), streamed. ``len`` comes from one pass over the headers."""

    def __init__(self, pattern: str, size: int) -> None:
        self.shards = expand_braces(pattern)
        missing = [s for s in self.shards if not Path(s).is_file()]
        if missing:
            raise UserError(f"shard '{missing[0]}' does not exist ({len(missing)} of {len(self.shards)} missing)")
        self.size = size
        self.counts, labels = [], []
        for s in self.shards:
            try:
                found = [(k, lab) for k, img, lab in _samples(s) if img is not None]
            except tarfile.TarError as e:
                raise UserError(f"shard '{s}' is not a readable tar file: {e}") from None
            self.counts.append(len(found))
            labels += [lab for _, lab in found]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.labels = torch.tensor(labels, dtype=torch.long) if labels and None not in labels else None
        self._plan: list[int] = []
        self._seed = 0

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def load(self, i: int) -> np.ndarray:
        """Random access (evaluation): reads the shard that holds sample ``i`` up to it."""
        shard = int(np.searchsorted(self.offsets, i, side="right") - 1)
        images = (img for _, img, _ in _samples(self.shards[shard]) if img is not None)
        for _ in range(i - int(self.offsets[shard])):
            next(images)
        out = decode_square(next(images), self.size)
        return out if out is not None else np.zeros((3, self.size, self.size), np.uint8)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """This worker's shards in turn, through a shuffle buffer of ``SHUFFLE_BUFFER`` encoded samples (seeded
        by the epoch and the worker), so a batch mixes samples of several shards and differs every epoch."""
        info = get_worker_info()
        shards = self._plan[info.id :: info.num_workers] if info else self._plan
        rng = np.random.default_rng([self._seed, info.id if info else 0])
        buffer: list[tuple[int, str, bytes]] = []
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

    def _encoded(self, shards: list[int]) -> Iterator[tuple[int, str, bytes]]:
        for s in shards:
            pos = int(self.offsets[s])
            for key, img, _ in _samples(self.shards[s]):
                if img is not None:
                    yield pos, f"{key} in {self.shards[s]}", img
                    pos += 1

    def _decoded(self, pos: int, name: str, img: bytes) -> tuple[int, np.ndarray]:
        out = decode_square(img, self.size)
        if out is None:
            _warn_unreadable(name)
            out = np.zeros((3, self.size, self.size), np.uint8)
        return pos, out

    def batches(self, epoch_seed: int, rank: int, world: int, start: int, batch: int, workers: int,
                pin: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """One epoch: shards shuffled by ``epoch_seed``, dealt to ranks, then to this rank's workers; each
        worker streams its shards whole (sequential reads) through its shuffle buffer. Batches of ``batch``;
        the first ``start`` skipped."""
        perm = torch.randperm(len(self.shards), generator=torch.Generator().manual_seed(epoch_seed)).tolist()
        self._plan, self._seed = perm[rank::world], epoch_seed
        if not self._plan:
            raise UserError(f"{len(self.shards)} shard(s) cannot feed {world} processes; write more shards")
        workers = min(workers, len(self._plan))
        loader = DataLoader(self, batch_size=batch, num_workers=workers, pin_memory=pin, drop_last=True,
                            collate_fn=_collate_indexed, prefetch_factor=4 if workers else None)
        for step, (idx, images) in enumerate(loader):
            if step >= start:
                yield idx, images, None if self.labels is None else self.labels[idx]


def _collate_indexed(items: list[tuple[int, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([i for i, _ in items]), torch.from_numpy(np.stack([a for _, a in items]))


def write_shards(paths: Sequence[Path], labels: Sequence[int] | None, out_dir: Path, per_shard: int = 1000,
                 prefix: str = "shard", seed: int | None = 0) -> list[Path]:
    """Write images (their file bytes, unchanged) into tar shards of ``per_shard`` samples, each with a
    ``.cls`` label member when ``labels`` are given. Returns the shard paths (written atomically).

    The samples are shuffled first (by ``seed``; ``None`` keeps the given order): a folder lists its images
    class by class, and a stream can only mix samples within a few shards at a time."""
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
