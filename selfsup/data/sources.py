"""Data sources. Every source becomes uint8 tensors ``(N, 3, H, W)`` in memory, decoded once.

A data SPEC is ``digits`` (scikit-learn, ships offline), ``cifar10`` / ``cifar100`` / ``stl10``
(torchvision; downloaded only with ``download=True``) or a folder (see :mod:`selfsup.data.folder`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from selfsup.errors import UserError

DEFAULT_STREAM_SIZE = 64  # side shards are decoded to when no --image-size is given (folders' default too)
DATASETS = {
    "digits": "scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes); ships offline",
    "cifar10": "CIFAR-10 via torchvision (32x32, 10 classes); --download fetches it",
    "cifar100": "CIFAR-100 via torchvision (32x32, 100 classes); --download fetches it",
    "stl10": "STL-10 via torchvision (96x96; pretrains on unlabeled+train); --download fetches it",
    "moving-objects": "generated videos (8 frames, 32x32): 4 shapes x 6 motions, 600 clips; labels = shape",
    "moving-objects:motion": "the same generated videos, labels = motion type (static, horizontal, ... zoom)",
    "scenes": "generated 2.5D scenes (64x64, 2,000 + 500): captions, depth, normals, segmentation, boxes; "
              "labels = shape of the largest object",
}

#: where a field comes from (the error that names a missing field says it)
FIELD_SOURCES = {"frames": "a video folder, or --data moving-objects",
                 "text": "captions beside the images (photo.txt), tar shards with key.txt, or --data scenes",
                 **{f: "--data scenes" for f in ("depth", "normals", "contours", "segmentation", "boxes")}}


@dataclass
class ImageSet:
    """Images as a uint8 tensor ``(N, 3, H, W)``, optional int64 labels, class names and file paths, and aligned
    per-sample ``fields`` beyond the image (each a tensor ``(N, ...)``: a clip's ``frames`` (N, T, 3, H, W) uint8,
    a caption's bytes ``text`` (N, L) uint8, ``depth`` / ``normals`` / ``contours`` maps, a ``motion`` label, ...),
    sliced with the batch and moved to the device like the images (see :class:`selfsup.methods.base.Batch`)."""

    images: torch.Tensor  # or a lazily decoded stand-in (selfsup.data.stream) for sets too big for memory
    labels: torch.Tensor | None = None
    classes: list[str] | None = None
    paths: list[str] | None = None
    fields: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def labeled(self) -> bool:
        return self.labels is not None

    @property
    def field_names(self) -> set[str]:
        """The fields every sample has: in memory, or streamed from tar shards (their schema)."""
        return set(self.fields) | set(getattr(self.images, "schema", {}))

    @property
    def streamed(self) -> bool:
        """Decoded on demand by DataLoader workers rather than held in memory."""
        return not isinstance(self.images, torch.Tensor)

    def subset(self, idx: torch.Tensor) -> ImageSet:
        from selfsup.data.stream import FileImages

        images = self.images.subset(idx) if isinstance(self.images, FileImages) else self.images[idx]
        return ImageSet(images, None if self.labels is None else self.labels[idx], self.classes,
                        None if self.paths is None else [self.paths[i] for i in idx.tolist()],
                        {k: v[idx] for k, v in self.fields.items()})


@dataclass
class Dataset:
    """What a SPEC resolves to: images to pretrain on, and labeled splits for evaluation (if any)."""

    name: str
    pretrain: ImageSet
    train: ImageSet | None = None  # labeled, for kNN / linear probes
    test: ImageSet | None = None
    skipped: list[str] = field(default_factory=list)  # unreadable files that were left out
    augment: dict = field(default_factory=dict)  # augmentation defaults that suit this data

    @property
    def evaluable(self) -> bool:
        return self.train is not None and self.test is not None and self.train.labeled and self.test.labeled

    @property
    def num_classes(self) -> int:
        labeled = [s for s in (self.pretrain, self.train) if s is not None and s.labeled]
        return int(max(int(s.labels.max()) for s in labeled)) + 1 if labeled else 0

    @property
    def native_size(self) -> int:
        return int(self.pretrain.images.shape[-1])


def data_root() -> Path:
    """Where torchvision datasets live: ``$SELFSUP_DATA`` or ``~/.cache/selfsup/datasets``."""
    return Path(os.environ.get("SELFSUP_DATA", Path.home() / ".cache" / "selfsup" / "datasets"))


def stratified_split(labels: torch.Tensor, test_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic per-class split of indices into (train, test)."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def load_digits() -> Dataset:
    """scikit-learn's digits as 8x8 RGB uint8 images, split 75/25 per class (seed 0)."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = torch.from_numpy(np.round(d.images * (255 / 16)).astype(np.uint8))[:, None].expand(-1, 3, -1, -1)
    full = ImageSet(images.contiguous(), torch.from_numpy(d.target).long(), [str(i) for i in range(10)])
    train_idx, test_idx = stratified_split(full.labels, 0.25)
    train = full.subset(train_idx)
    # 8x8 digits: no mirror images (a flipped 3 is no digit) and crops that keep most of the stroke
    return Dataset("digits", pretrain=train, train=train, test=full.subset(test_idx),
                   augment={"crop_scale": (0.4, 1.0), "flip_p": 0.0})


def _torchvision(name: str, download: bool) -> Dataset:
    import torchvision.datasets as tvd

    root = data_root() / name

    def get(cls, **kw):
        try:
            return cls(str(root), download=download, **kw)
        except RuntimeError as e:
            if not download:
                raise UserError(f"{name} is not in {root}; pass --download to fetch it (needs internet), "
                                f"or set SELFSUP_DATA to where it lives") from None
            raise UserError(f"could not get {name}: {e}") from None
        except OSError as e:  # network errors while downloading
            raise UserError(f"could not download {name} (offline?): {e}") from None

    def to_set(ds, images: np.ndarray, labels) -> ImageSet:
        t = torch.from_numpy(np.ascontiguousarray(images))
        return ImageSet(t, torch.as_tensor(np.asarray(labels), dtype=torch.long), list(getattr(ds, "classes", [])))

    if name in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        tr, te = get(cls, train=True), get(cls, train=False)
        train = to_set(tr, tr.data.transpose(0, 3, 1, 2), tr.targets)
        test = to_set(te, te.data.transpose(0, 3, 1, 2), te.targets)
        return Dataset(name, pretrain=train, train=train, test=test)
    unl, tr, te = (get(tvd.STL10, split=s) for s in ("unlabeled", "train", "test"))
    train, test = to_set(tr, tr.data, tr.labels), to_set(te, te.data, te.labels)
    pretrain = ImageSet(torch.cat([torch.from_numpy(unl.data), train.images]))
    return Dataset(name, pretrain=pretrain, train=train, test=test)


def load_data(spec: str, image_size: int | None = None, download: bool = False, stream: bool = False) -> Dataset:
    """Resolve a data SPEC (``digits``, ``cifar10``, ``cifar100``, ``stl10``, a folder path, or tar shards
    ``wds:/path/shard-{000000..000099}.tar``).

    ``image_size`` is the side folders and shards are decoded to (shorter side resized, centre crop; by
    default a folder's own size when its images are all one square size, else :data:`DEFAULT_STREAM_SIZE`,
    which shards always get); named datasets keep their native size and are resized on the fly. ``stream``:
    decode a folder's images on demand in DataLoader workers instead of once into memory (automatic for large
    folders; shards always stream).
    """
    if spec.startswith("wds:"):
        from selfsup.data.stream import ShardImages

        shards = ShardImages(spec[4:], image_size or DEFAULT_STREAM_SIZE)
        return Dataset(spec, pretrain=ImageSet(shards, shards.labels), skipped=shards.skipped)
    if spec == "digits":
        return load_digits()
    if spec == "scenes":
        from selfsup.data.scenes import scenes

        return scenes(size=image_size or 64)
    if spec in ("moving-objects", "moving-objects:motion"):
        from selfsup.data.moving_objects import moving_objects

        return moving_objects(size=image_size or 32, labels=spec.partition(":")[2] or "object")
    if spec in DATASETS:
        return _torchvision(spec, download)
    from selfsup.data.folder import load_folder_dataset

    if not (os.sep in spec or spec.startswith(".") or Path(spec).exists()):
        raise UserError(f"unknown dataset '{spec}': not one of {', '.join(DATASETS)} and no such folder")
    return load_folder_dataset(Path(spec), image_size, stream)


def load_images(spec: str, image_size: int, what: str) -> torch.Tensor:
    """The pretraining images of the data SPEC (:func:`load_data` at ``image_size``), uint8 ``(N, 3, H, W)``, refused
    with one line naming ``what`` they are where they cannot be loaded or held in memory."""
    try:
        images = load_data(spec, image_size).pretrain.images
    except UserError as e:
        raise UserError(f"{what} cannot be loaded: {e}") from None
    if not isinstance(images, torch.Tensor) or len(images) == 0:
        raise UserError(f"{what} must be a non-empty set held in memory")
    return images
