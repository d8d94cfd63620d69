"""Images with dense targets for the transfer evaluations (:mod:`selfsup.evaluate.segmentation`,
:mod:`selfsup.evaluate.detection`): segmentation masks and/or object boxes, read from PASCAL VOC folders
(Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010), COCO instance annotations (Lin et
al., "Microsoft COCO: Common Objects in Context", ECCV 2014), or an ImageSet's ``segmentation`` / ``boxes`` /
``box_labels`` fields (the generated scenes).

Every image is decoded as image folders are (shorter side resized to ``size``, centre crop:
:func:`~selfsup.data.stream.decode_square`), its mask by nearest neighbour through the same resize and crop, its boxes
scaled and shifted alike and clipped to the square (boxes the crop cuts off entirely are left out). Bad input: a
missing folder or annotation file, or an object of a class not among the classes, is a one-line UserError; an
unreadable image, mask or XML file, a mask of another size than its image or with class ids beyond the classes, and
an XML file without objects are skipped; a box with no area inside its image and an annotation of an unknown COCO
category are dropped; both are counted and reported in one line each (the first as an example).
"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from selfsup.data.sources import DEFAULT_STREAM_SIZE, ImageSet
from selfsup.data.stream import UnreadableImage, decode_square, printable
from selfsup.errors import UserError

#: PASCAL VOC's 20 object classes (mask ids and box labels 1..20), the default of :func:`load_voc`
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
IGNORE = 255  # mask value of pixels no loss or score counts (VOC's object boundaries)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class DenseSet:
    """uint8 images ``(N, 3, S, S)`` with ``segmentation`` uint8 ``(N, S, S)`` (0 background, k class k,
    :data:`IGNORE` unscored) and/or ``boxes`` float32 ``(N, M, 4)`` xyxy in pixels with 1-based ``box_labels``
    int64 ``(N, M)`` (rows padded with -1). ``classes[k]`` names class k, ``classes[0]`` is the background.
    ``skipped`` and ``dropped`` say which files and boxes were left out, and why."""

    images: torch.Tensor
    classes: list[str]
    segmentation: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    box_labels: torch.Tensor | None = None
    paths: list[str] | None = None
    skipped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n, size = len(self.images), tuple(self.images.shape[-2:])
        if (self.boxes is None) != (self.box_labels is None):
            raise UserError("a dense set needs both boxes and box_labels, or neither")
        if self.segmentation is not None and (self.segmentation.dtype != torch.uint8
                                              or tuple(self.segmentation.shape) != (n, *size)):
            raise UserError(f"segmentation must be uint8 {(n, *size)} like the images (got "
                            f"{self.segmentation.dtype} {tuple(self.segmentation.shape)})")
        if self.boxes is not None and (self.boxes.dim() != 3 or self.boxes.shape[::2] != (n, 4)
                                       or self.box_labels.shape != self.boxes.shape[:2]):
            raise UserError(f"boxes must be (N, M, 4) and box_labels (N, M) for N = {n} images (got "
                            f"{tuple(self.boxes.shape)} and {tuple(self.box_labels.shape)})")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        """Classes counting the background."""
        return len(self.classes)

    def subset(self, idx: torch.Tensor) -> DenseSet:
        seg, boxes, labels = (None if t is None else t[idx] for t in (self.segmentation, self.boxes, self.box_labels))
        return DenseSet(self.images[idx], self.classes, seg, boxes, labels,
                        None if self.paths is None else [self.paths[i] for i in idx.tolist()])


class _Skip(Exception):
    """A file left out of the set; the message says why."""


@dataclass
class _Item:
    """One image as found on disk: its file, its mask's, and its objects ``(label, xyxy box in its pixels)`` (or
    None for a set without boxes); ``dropped`` collects the boxes left out, ``problem`` says why it is skipped."""

    image: Path
    mask: Path | None = None
    objects: list[tuple[int, tuple[float, ...]]] | None = None
    dropped: list[str] = field(default_factory=list)
    problem: str | None = None  # why the item cannot be used (its annotation is bad)


def _workers() -> int:
    return min(8, (os.cpu_count() or 1) * 2)


def _header(path: Path) -> tuple[int, int]:
    if not path.is_file():
        raise _Skip(f"{printable(path)}: no such image")
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:  # noqa: BLE001 - any decoder error means unreadable
        raise _Skip(f"{printable(path)}: unreadable image ({type(e).__name__})") from None


def _square(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """decode_square's geometry: the ``w`` x ``h`` image is resized to ``(rw, rh)``, then cut at ``(left, top)``."""
    scale = size / min(w, h)
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    return rw, rh, (rw - size) // 2, (rh - size) // 2


def _mask(path: Path, w: int, h: int, size: int, num_classes: int) -> np.ndarray:
    """A palette or grey index PNG ``(h, w)`` through the image's resize (nearest) and crop."""
    if not path.is_file():
        raise _Skip(f"{printable(path)}: no such mask")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise _Skip(f"{printable(path)}: a {im.mode} mask; masks are palette or grey PNGs of class ids")
            if im.size != (w, h):
                raise _Skip(f"{printable(path)}: the mask is {im.size[0]}x{im.size[1]}, its image {w}x{h}")
            rw, rh, left, top = _square(w, h, size)
            ids = np.asarray(im.resize((rw, rh), Image.NEAREST))[top : top + size, left : left + size]
    except _Skip:
        raise
    except Exception as e:  # noqa: BLE001
        raise _Skip(f"{printable(path)}: unreadable mask ({type(e).__name__})") from None
    bad = np.unique(ids[(ids >= num_classes) & (ids != IGNORE)])
    if len(bad):
        raise _Skip(f"{printable(path)}: class id {bad[0]} in the mask, beyond the {num_classes - 1} classes")
    return np.ascontiguousarray(ids, dtype=np.uint8)


def _place(item: _Item, w: int, h: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The items' boxes clipped to the image (those with no area inside are dropped), then through its resize
    and crop: ``(n, 4)`` float32 and labels ``(n,)``, boxes the crop cuts off left out."""
    rw, rh, left, top = _square(w, h, size)
    boxes, labels = [], []
    for label, box in item.objects:
        x1, y1, x2, y2 = np.clip(np.asarray(box, np.float64), 0, [w, h, w, h])
        if not (np.isfinite(box).all() and x2 > x1 and y2 > y1):
            item.dropped.append(f"{printable(item.image)}: box {tuple(round(v, 1) for v in box)} has no area "
                                f"inside the {w}x{h} image")
            continue
        placed = np.clip([x1 * rw / w - left, y1 * rh / h - top, x2 * rw / w - left, y2 * rh / h - top], 0, size)
        if placed[2] > placed[0] and placed[3] > placed[1]:
            boxes.append(placed)
            labels.append(label)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def _load(item: _Item, size: int, num_classes: int) -> dict:
    if item.problem:
        raise _Skip(item.problem)
    w, h = _header(item.image)
    try:
        record = {"image": decode_square(item.image, size, draft=False)}
    except UnreadableImage as e:
        raise _Skip(f"{printable(item.image)}: {e}") from None
    if item.mask is not None:
        record["mask"] = _mask(item.mask, w, h, size, num_classes)
    if item.objects is not None:
        record["boxes"], record["labels"] = _place(item, w, h, size)
    return record


def _report(kind: str, problems: list[str], where: Path) -> None:
    if problems:
        print(f"warning: {kind} {len(problems)} in '{printable(where)}', e.g. {problems[0]}", file=sys.stderr)


def _common_size(items: list[_Item]) -> int:
    """The images' own side when all are one square size, else :data:`DEFAULT_STREAM_SIZE`."""
    sizes = set()
    for item in items:
        try:
            if not item.problem:
                sizes.add(_header(item.image))
        except _Skip:
            continue
    (w, h), *others = sizes or [(0, 1)]
    return w if w == h and not others else DEFAULT_STREAM_SIZE


def _build(items: list[_Item], classes: list[str], size: int | None, where: Path) -> DenseSet:
    """Decode ``items`` (in a thread pool) into a :class:`DenseSet`; unreadable ones are skipped and reported."""
    if not items:
        raise UserError(f"no annotated images found in '{printable(where)}'")
    size = size or _common_size(items)

    def attempt(item: _Item) -> dict | str:
        try:
            return _load(item, size, len(classes))
        except _Skip as e:
            return str(e)

    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        results = list(pool.map(attempt, items))
    kept = [i for i, r in enumerate(results) if not isinstance(r, str)]
    skipped = [r for r in results if isinstance(r, str)]
    dropped = [d for item in items for d in item.dropped]
    _report("skipped unreadable or unannotated file(s):", skipped, where)
    _report("dropped box(es):", dropped, where)
    if not kept:
        raise UserError(f"none of the {len(items)} annotated images in '{printable(where)}' could be read, e.g. "
                        f"{skipped[0]}")
    records = [results[i] for i in kept]
    images = torch.from_numpy(np.stack([r["image"] for r in records]))
    masks = torch.from_numpy(np.stack([r["mask"] for r in records])) if items[0].mask is not None else None
    boxes = labels = None
    if items[0].objects is not None:
        boxes, labels = pad_boxes([torch.from_numpy(r["boxes"]) for r in records],
                                  [torch.from_numpy(r["labels"]) for r in records])
    return DenseSet(images, classes, masks, boxes, labels, [str(items[i].image) for i in kept], skipped, dropped)


def pad_boxes(boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image boxes ``(n_i, 4)`` and labels ``(n_i,)`` as padded tensors ``(N, M, 4)`` and ``(N, M)`` (-1 rows)."""
    m = max([1, *(len(b) for b in boxes)])
    out = torch.full((len(boxes), m, 4), -1.0)
    out_labels = torch.full((len(boxes), m), -1, dtype=torch.long)
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        out[i, : len(b)], out_labels[i, : len(b)] = b, lab
    return out, out_labels


def _voc_classes(root: Path, classes: Sequence[str] | None) -> list[str]:
    """``background`` + ``classes``, else + the names in ``root/classes.txt`` or ``root/labels.txt`` (one a line,
    a first ``background`` left out), else + VOC's 20."""
    listed = next((root / n for n in ("classes.txt", "labels.txt") if (root / n).is_file()), None)
    if classes is None and listed is not None:
        classes = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
        classes = classes[1:] if classes and classes[0] == "background" else classes
    return ["background", *(VOC_CLASSES if classes is None else classes)]


def _voc_objects(path: Path, classes: list[str], dropped: list[str]) -> list[tuple[int, tuple[float, ...]]]:
    """``(label, (xmin - 1, ymin - 1, xmax, ymax))`` of every object in a VOC annotation (1-based inclusive pixel
    indices to xyxy edges)."""
    try:
        objects = ET.parse(path).getroot().findall("object")
    except (ET.ParseError, OSError) as e:
        raise _Skip(f"{printable(path)}: unreadable annotation ({e})") from None
    if not objects:
        raise _Skip(f"{printable(path)}: no objects in the annotation")
    out = []
    for obj in objects:
        name = (obj.findtext("name") or "").strip()
        if name not in classes[1:]:
            raise UserError(f"{printable(path)} names the class '{name}', not one of the {len(classes) - 1} "
                            f"classes ({', '.join(classes[1:4])}, ...); pass classes= or list them in classes.txt")
        try:
            xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            dropped.append(f"{printable(path)}: an object '{name}' without a readable bndbox")
            continue
        out.append((classes.index(name), (xmin - 1, ymin - 1, xmax, ymax)))
    return out


def _voc_ids(root: Path, split: str | None, masks: bool) -> list[str]:
    if split is None:
        folder, suffix = ("SegmentationClass", ".png") if masks else ("Annotations", ".xml")
        return sorted(p.stem for p in (root / folder).iterdir() if p.suffix == suffix)
    lists = ([root / "ImageSets" / "Segmentation" / f"{split}.txt"] if masks else []) + [
        root / "ImageSets" / "Main" / f"{split}.txt"]
    found = next((p for p in lists if p.is_file()), None)
    if found is None:
        raise UserError(f"no {' or '.join(str(p.relative_to(root)) for p in lists)} in '{printable(root)}'")
    return [line.split()[0] for line in found.read_text().splitlines() if line.strip()]


def load_voc(root: str | Path, split: str | None = None, size: int | None = None,
             classes: Sequence[str] | None = None) -> DenseSet:
    """A PASCAL VOC folder: ``JPEGImages/ID.jpg`` with masks ``SegmentationClass/ID.png`` (palette or grey PNGs of
    class ids, 255 unscored) and/or boxes ``Annotations/ID.xml`` (whichever folders exist), for the ids of
    ``ImageSets/Segmentation/SPLIT.txt`` (when masks exist) or ``ImageSets/Main/SPLIT.txt``, or every mask's (else
    annotation's) id when ``split`` is None. ``classes``: the object classes 1..K (default: ``classes.txt`` or
    ``labels.txt`` in ``root``, one a line, else :data:`VOC_CLASSES`). Decoded at ``size`` (default: the images' own
    side when all are one square size, else 64). Objects marked difficult count as any other."""
    root = Path(root)
    if not (root / "JPEGImages").is_dir():
        raise UserError(f"'{printable(root)}' is no VOC folder: it has no JPEGImages folder")
    masks, annotated = (root / "SegmentationClass").is_dir(), (root / "Annotations").is_dir()
    if not (masks or annotated):
        raise UserError(f"'{printable(root)}' has neither SegmentationClass nor Annotations: no targets")
    names = _voc_classes(root, classes)
    items = []
    for stem in _voc_ids(root, split, masks):
        image = next((p for p in (root / "JPEGImages" / f"{stem}{s}" for s in IMAGE_SUFFIXES) if p.is_file()),
                     root / "JPEGImages" / f"{stem}.jpg")
        items.append(_Item(image, root / "SegmentationClass" / f"{stem}.png" if masks else None))
    return _build(_with_objects(items, root, names, annotated), names, size, root)


def _with_objects(items: list[_Item], root: Path, names: list[str], annotated: bool) -> list[_Item]:
    """Read the items' annotations (in the caller's thread, so that an unknown class stops the load)."""
    if not annotated:
        return items
    for item in items:
        try:
            item.objects = _voc_objects(root / "Annotations" / f"{item.image.stem}.xml", names, item.dropped)
        except _Skip as e:
            item.objects, item.problem = [], str(e)
    return items


def load_coco(images: str | Path, annotations: str | Path, size: int | None = None) -> DenseSet:
    """COCO instance annotations (``annotations``, a JSON file of ``images``, ``annotations`` and ``categories``)
    of the images in the folder ``images``: boxes ``[x, y, w, h]`` become xyxy, the categories sorted by id become
    classes 1..K; crowd annotations are left out, images without annotations kept (no boxes). Decoded at ``size``
    as :func:`load_voc`."""
    folder, path = Path(images), Path(annotations)
    if not folder.is_dir():
        raise UserError(f"image folder '{printable(folder)}' does not exist")
    try:
        data = json.loads(path.read_text())
        categories = sorted(data["categories"], key=lambda c: c["id"])
        ids = {c["id"]: k for k, c in enumerate(categories, 1)}
        names = ["background", *(str(c["name"]) for c in categories)]
        entries = {im["id"]: _Item(folder / im["file_name"], objects=[]) for im in data["images"]}
        found = data["annotations"]
    except OSError as e:
        raise UserError(f"cannot read the annotations '{printable(path)}': {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"'{printable(path)}' is no COCO instance file ({type(e).__name__}: {e})") from None
    lost: list[str] = []
    for ann in found:
        item = entries.get(ann.get("image_id"))
        if ann.get("iscrowd"):
            continue
        if item is None or ann.get("category_id") not in ids or len(ann.get("bbox", ())) != 4:
            lost.append(f"annotation {ann.get('id')}: unknown image {ann.get('image_id')} or category "
                        f"{ann.get('category_id')}, or no [x, y, w, h] bbox")
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        item.objects.append((ids[ann["category_id"]], (x, y, x + w, y + h)))
    out = _build(list(entries.values()), names, size, folder)
    _report("dropped annotation(s):", lost, path)
    out.dropped += lost
    return out


def from_image_set(images: ImageSet, classes: Sequence[str] | None = None) -> DenseSet:
    """An in-memory ImageSet's ``segmentation`` and/or ``boxes`` + ``box_labels`` fields as a DenseSet (the
    generated scenes). ``classes``: the object classes 1..K; by default the set's own class names when they are as
    many as the largest id found or more (the scenes: their labels are the shapes, mask and box class k is shape
    k - 1), else ``class1``, ``class2``, ..."""
    fields = images.fields
    if images.streamed or not ("segmentation" in fields or "boxes" in fields):
        raise UserError("dense evaluation needs in-memory images with a segmentation or boxes field")
    if classes is None:
        top = [int(fields["box_labels"].max())] if "box_labels" in fields else []
        if "segmentation" in fields:
            seg = fields["segmentation"]
            top.append(int(seg[seg != IGNORE].max()) if (seg != IGNORE).any() else 0)
        own = images.classes or []
        classes = own if len(own) >= max(top) else [f"class{k}" for k in range(1, max(top) + 1)]
    return DenseSet(images.images, ["background", *classes], fields.get("segmentation"), fields.get("boxes"),
                    fields.get("box_labels"), images.paths)
