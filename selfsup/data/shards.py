"""The samples of WebDataset-style tar shards, parsed: the members that share a key (the member's name up to the
first dot of its file name) make one sample, read in file order as a stream.

* an image (``.jpg``, ``.png``, ...): the sample's pixels; a key without one is left out;
* ``.cls``: its label, a non-negative integer;
* ``.txt``: its caption, the field ``text`` (UTF-8 bytes, :func:`selfsup.data.text.encode_texts`);
* ``.json``: an object whose ``label`` entry (a non-negative integer) is the label when there is no ``.cls``, and
  whose other numeric entries (a number, or nested lists of numbers) become float32 fields of their name (other
  entries, such as strings, are ignored);
* ``.npy``: a numeric array, the float32 field ``vector`` (e.g. a topic vector or a text embedding).

The first shard that holds a readable sample fixes the fields every sample has: ``text`` and ``vector`` when any
of its samples has them (at the shape most have), a ``.json`` entry when all of them have it at one shape (so
that metadata some samples lack, or lists of varying length, are no fields). A sample that lacks one of these
fields or holds it at another shape, a part that cannot be read (broken JSON or array), a member over
``$SELFSUP_MAX_MEMBER_MB`` and a key without an image are left out, counted and reported once with an example;
other fields are ignored (one note names them).
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from selfsup.data.text import encode_texts
from selfsup.errors import UserError

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "gif", "tif", "tiff")  # what folders read
PARTS = ("cls", "txt", "json", "npy")  # the other members a sample may have (anything else is ignored)
PART_FIELDS = {"text": ".txt", "vector": ".npy"}  # fields named by a member, not by a .json entry


def max_member_bytes() -> int:
    """Tar members larger than this are skipped unread (``$SELFSUP_MAX_MEMBER_MB``, default 64)."""
    return int(float(os.environ.get("SELFSUP_MAX_MEMBER_MB", 64)) * 2**20)


class BrokenPart(ValueError):
    """A member that cannot be read as what its suffix says; the message says why."""


@dataclass
class Sample:
    """One sample of a shard: the members that share a key."""

    key: str
    image: bytes | None = None  # the image member's bytes, when asked for
    has_image: bool = False  # an image member no larger than the limit
    too_large: list[str] = field(default_factory=list)  # suffixes of the members over the limit, left unread
    parts: dict[str, bytes] = field(default_factory=dict)  # PARTS by suffix (a .cls: its first 32 bytes)

    @property
    def image_too_large(self) -> bool:
        return not self.has_image and any(s in IMAGE_SUFFIXES for s in self.too_large)


def read_samples(path: str, max_bytes: int, images: bool = True) -> Iterator[Sample]:
    """Every sample of one tar shard, in file order, read as a stream. The image's bytes are read only when asked
    for (``images``); no member over ``max_bytes`` is ever read."""
    sample = None
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, base = os.path.split(member.name)
            stem, _, ext = base.partition(".")
            key, ext = os.path.join(folder, stem), ext.lower()
            if sample is None or key != sample.key:
                if sample is not None:
                    yield sample
                sample = Sample(key)
            if ext not in IMAGE_SUFFIXES and ext not in PARTS:
                continue
            if member.size > max_bytes:
                sample.too_large.append(ext)
            elif ext in IMAGE_SUFFIXES:
                sample.has_image = True
                sample.image = tar.extractfile(member).read() if images else None
            elif ext == "cls":
                text = tar.extractfile(member).read(32)
                sample.parts[ext] = text + b"..." if member.size > len(text) else text
            else:
                sample.parts[ext] = tar.extractfile(member).read()
    if sample is not None:
        yield sample


def _where(shard: str, key: str) -> str:
    from selfsup.data.stream import printable

    return f"shard '{printable(shard)}', sample '{printable(key)}'"


def _label(text: bytes, shard: str, key: str) -> int:
    """The integer in a ``.cls`` member; anything else is a user error naming the shard and the sample."""
    if not re.fullmatch(rb"\s*\d{1,18}\s*", text):
        raise UserError(f"{_where(shard, key)}: the label member (.cls) must hold a non-negative integer, "
                        f"not {text[:20]!r}")
    return int(text)


def _numbers(value: object) -> torch.Tensor | None:
    """A JSON number, or nested lists of numbers of one shape, as float32; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float | list):
        return None
    try:
        array = np.asarray(value)
    except (ValueError, OverflowError):  # ragged lists
        return None
    return torch.from_numpy(array.astype(np.float32)) if array.dtype.kind in "biuf" else None


def _json(data: bytes, shard: str, key: str) -> tuple[int | None, dict[str, torch.Tensor]]:
    """The label and the numeric entries of a ``.json`` member."""
    try:
        entries = json.loads(data)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deep
        raise BrokenPart("its .json is not valid JSON") from None
    if not isinstance(entries, dict):
        raise BrokenPart(f"its .json holds a {type(entries).__name__}, not an object")
    label, fields = None, {}
    for name, value in entries.items():
        numbers = _numbers(value)
        if name != "label":
            if numbers is not None:
                fields[name] = numbers
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**18:
            label = value
        elif numbers is not None:
            raise UserError(f"{_where(shard, key)}: the label entry of the .json must be a non-negative integer, "
                            f"not {json.dumps(value)[:20]}")
    return label, fields


def read_array(source: bytes | str | os.PathLike) -> np.ndarray:
    """The numbers of an ``.npy`` file or member as float32; :class:`BrokenPart` says why they cannot be read."""
    try:
        array = np.load(io.BytesIO(source) if isinstance(source, bytes) else source, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - whatever np.load raises on a broken file means "unreadable"
        raise BrokenPart(f"is not a readable array ({str(e)[:120] or type(e).__name__})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise BrokenPart(f"holds {getattr(array, 'dtype', 'an archive')}, not numbers")
    return array.astype(np.float32)


def parse(sample: Sample, shard: str) -> tuple[int | None, dict[str, torch.Tensor]]:
    """The sample's label (None without one) and fields. Raises :class:`BrokenPart` for a part that cannot be
    read (or was too large to), :class:`UserError` for a label that is not a non-negative integer."""
    parts = [s for s in sample.too_large if s not in IMAGE_SUFFIXES]
    if parts:
        raise BrokenPart(f"its .{parts[0]} is larger than the limit ($SELFSUP_MAX_MEMBER_MB)")
    found = sample.parts
    fields = {"text": encode_texts([found["txt"].decode("utf-8", "replace").strip()])[0]} if "txt" in found else {}
    if "npy" in found:
        try:
            fields["vector"] = torch.from_numpy(read_array(found["npy"]))
        except BrokenPart as e:
            raise BrokenPart(f"its .npy {e}") from None
    label = _label(found["cls"], shard, sample.key) if "cls" in found else None
    if "json" in found:
        json_label, entries = _json(found["json"], shard, sample.key)
        clash = sorted(entries.keys() & fields.keys())
        if clash:
            raise UserError(f"{_where(shard, sample.key)}: the .json entry '{clash[0]}' names the field of its "
                            f"{PART_FIELDS[clash[0]]} member too; rename one")
        fields.update(entries)
        label = json_label if label is None else label
    return label, fields


def _common(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Zero templates of the fields of ``samples``: ``text`` and ``vector`` when any has them, at the shape most
    have; a ``.json`` entry when every one has it at one shape."""
    kinds = Counter((name, tuple(t.shape), t.dtype) for fields in samples for name, t in fields.items())
    schema: dict[str, torch.Tensor] = {}
    for (name, shape, dtype), n in kinds.most_common():
        if name in PART_FIELDS or n == len(samples):
            schema.setdefault(name, torch.zeros(shape, dtype=dtype))
    return schema


def _mismatch(fields: dict[str, torch.Tensor], schema: dict[str, torch.Tensor]) -> str | None:
    """Why a sample's ``fields`` do not fit ``schema`` (None when they do)."""
    for name, template in schema.items():
        what = PART_FIELDS.get(name, f"'{name}' in its .json")
        if name not in fields:
            return f"no {what}, which the first shard's samples have"
        if fields[name].shape != template.shape:
            return f"its {what} has shape {tuple(fields[name].shape)}, not {tuple(template.shape)} as the first shard's"
    return None


def fitted(sample: Sample, shard: str, schema: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A kept sample's fields as ``schema`` has them; zeros, reported on one line, for a sample that no longer
    parses (its shard changed since it was indexed)."""
    try:
        fields = parse(sample, shard)[1]
        why = _mismatch(fields, schema)
    except BrokenPart as e:
        why = str(e)
    if why is None:
        return {name: fields[name] for name in schema}
    from selfsup.data.stream import printable

    print(f"warning: {printable(sample.key)} in {printable(shard)} changed since the shards were indexed (fields "
          f"left zero in its batch): {why}", file=sys.stderr)
    return {name: torch.zeros_like(t) for name, t in schema.items()}


@dataclass
class ShardIndex:
    """What one pass over the shards' members finds (images and labelled parts are all that is kept)."""

    counts: list[int] = field(default_factory=list)  # samples kept, per shard
    labels: list[int | None] = field(default_factory=list)  # per sample kept
    skipped: list[str] = field(default_factory=list)  # "KEY in SHARD" of every sample left out
    dropped: list[set[str]] = field(default_factory=list)  # per shard: the keys of samples left out despite an image
    schema: dict[str, torch.Tensor] = field(default_factory=dict)  # zero templates of the fields every sample has


def index_shards(shards: list[str], max_bytes: int) -> ShardIndex:
    """One pass over every shard (images unread): which samples are kept, their labels, the fields they have;
    samples left out are counted in ``skipped`` and reported once per kind, with an example."""
    from selfsup.data.stream import printable

    index, fixed, large, broken, extra, extra_count = ShardIndex(), False, [], [], set(), 0
    for shard in shards:
        try:
            samples = list(read_samples(shard, max_bytes, images=False))
        except tarfile.TarError as e:
            raise UserError(f"shard '{printable(shard)}' is not a readable tar file: {e}") from None
        parsed: list[tuple[int | None, dict[str, torch.Tensor]] | str] = []
        for sample in samples:
            try:
                parsed.append(parse(sample, shard) if sample.has_image else "it has no image member")
            except BrokenPart as e:
                parsed.append(str(e))
        if not fixed and any(not isinstance(p, str) for p in parsed):
            index.schema, fixed = _common([p[1] for p in parsed if not isinstance(p, str)]), True
        index.dropped.append(set())
        count = 0
        for sample, p in zip(samples, parsed, strict=True):
            where = f"{sample.key} in {shard}"
            why = p if isinstance(p, str) else _mismatch(p[1], index.schema)
            if sample.image_too_large:
                large.append(where)
            elif why is not None:
                broken.append((where, why))
            else:
                count += 1
                index.labels.append(p[0])
                more = p[1].keys() - index.schema.keys()
                extra, extra_count = extra | more, extra_count + bool(more)
                continue
            index.skipped.append(where)
            if sample.has_image:
                index.dropped[-1].add(sample.key)
        index.counts.append(count)
    if large:
        print(f"warning: skipped {len(large)} image(s) larger than {max_bytes / 2**20:g} MiB "
              f"($SELFSUP_MAX_MEMBER_MB), e.g. {printable(large[0])}", file=sys.stderr)
    if broken:
        print(f"warning: skipped {len(broken)} sample(s) of the shards with a missing or unreadable part, e.g. "
              f"{printable(broken[0][0])}: {broken[0][1]}", file=sys.stderr)
    if extra:
        print(f"note: {extra_count} sample(s) have fields that not every sample of the first shard has at one shape "
              f"({', '.join(sorted(extra))}); they are ignored", file=sys.stderr)
    return index
