"""What ``--data`` means for the dense evaluations (``selfsup eval segmentation|detection``, the bench's ``dense``):
a train and a test :class:`~selfsup.data.dense.DenseSet` from the generated scenes, a PASCAL VOC folder or a COCO
folder."""

from __future__ import annotations

from pathlib import Path

import torch

from selfsup.data.dense import DenseSet, from_image_set, load_coco, load_voc
from selfsup.errors import UserError

#: the share of a VOC folder without split lists that is held out for testing (a seeded split)
TEST_FRACTION = 0.2


def _voc_splits(root: Path, size: int | None) -> tuple[DenseSet, DenseSet]:
    """``ImageSets/{Segmentation,Main}/{train,val}.txt`` when they exist, else every image, split 80/20 (seed 0)."""
    lists = [root / "ImageSets" / kind for kind in ("Segmentation", "Main")]
    if any((d / "train.txt").exists() and (d / "val.txt").exists() for d in lists):
        return load_voc(root, "train", size), load_voc(root, "val", size)
    whole = load_voc(root, None, size)
    if len(whole) < 2:
        raise UserError(f"'{root}' holds {len(whole)} annotated image(s): a train and a test split need 2 or more")
    order = torch.randperm(len(whole), generator=torch.Generator().manual_seed(0))
    n_test = max(1, round(len(whole) * TEST_FRACTION))
    return whole.subset(order[n_test:].sort().values), whole.subset(order[:n_test].sort().values)


def _coco_split(root: Path, split: str, size: int | None) -> DenseSet:
    """``annotations/instances_<split>*.json`` and the image folder of the same name (COCO 2017's layout)."""
    found = sorted((root / "annotations").glob(f"instances_{split}*.json"))
    if not found:
        raise UserError(f"no annotations/instances_{split}*.json in the COCO folder '{root}'")
    images = root / found[0].stem.removeprefix("instances_")
    if not images.is_dir():
        raise UserError(f"the COCO folder '{root}' has {found[0].name} but no image folder '{images.name}'")
    return load_coco(images, found[0], size)


def load_dense(spec: str, size: int | None = None) -> tuple[DenseSet, DenseSet]:
    """Train and test sets of a dense ``spec``: ``scenes`` (generated: masks and boxes of every object), a VOC
    folder (``JPEGImages`` with ``SegmentationClass`` and/or ``Annotations``) or ``coco:ROOT`` (COCO 2017 layout:
    ``ROOT/annotations/instances_train2017.json`` with ``ROOT/train2017/``, and the same for ``val``)."""
    if spec == "scenes":
        from selfsup.data.scenes import scenes

        data = scenes(size=size or 64)
        return from_image_set(data.train), from_image_set(data.test)
    if spec.startswith("coco:"):
        root = Path(spec[5:])
        if not root.is_dir():
            raise UserError(f"COCO folder '{root}' does not exist")
        return _coco_split(root, "train", size), _coco_split(root, "val", size)
    root = Path(spec)
    if not (root / "JPEGImages").is_dir():
        raise UserError(f"'{spec}' is no dense data set: use scenes, a VOC folder (with JPEGImages/) or coco:ROOT")
    return _voc_splits(root, size)
