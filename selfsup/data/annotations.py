"""Write a labelled set (``segmentation``, ``boxes`` / ``box_labels`` fields, e.g. :mod:`selfsup.data.scenes`) as the
files other tools read: a PASCAL VOC tree (Everingham et al., The PASCAL Visual Object Classes (VOC) Challenge,
IJCV 2010) and COCO JSON (Lin et al., Microsoft COCO: Common Objects in Context, ECCV 2014).

Boxes in the fields are xyxy pixel edges (a box spans columns x0 .. x1 - 1); VOC stores them as 1-based inclusive
pixel indices (xmin = x0 + 1, xmax = x1), COCO as [x0, y0, x1 - x0, y1 - y0].
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from selfsup.data.sources import Dataset, ImageSet
from selfsup.data.text import decode_texts
from selfsup.errors import UserError

NEEDED = ("segmentation", "boxes", "box_labels")


def _splits(data: Dataset | ImageSet) -> dict[str, ImageSet]:
    """VOC / COCO split names: a Dataset's train (or pretrain) set is ``train``, its test set ``val``."""
    if isinstance(data, ImageSet):
        return {"train": data}
    return {name: s for name, s in (("train", data.pretrain if data.train is None else data.train),
                                                ("val", data.test)) if s is not None}


def _categories(splits: dict[str, ImageSet], categories: Sequence[str] | None) -> list[str]:
    for name, s in splits.items():
        missing = [k for k in NEEDED if k not in s.fields]
        if missing:
            raise UserError(f"the {name} set has no {', '.join(missing)} field(s) to write as annotations")
    names = list(categories or next(iter(splits.values())).classes or [])
    if not names:
        raise UserError("name the categories (segmentation class k is categories[k - 1])")
    return names


def _objects(s: ImageSet, i: int) -> list[tuple[int, list[float]]]:
    """(1-based category, xyxy box) of sample ``i``'s objects, padding left out."""
    return [(int(c), b) for c, b in zip(s.fields["box_labels"][i].tolist(), s.fields["boxes"][i].tolist()) if c > 0]


def _rgb(s: ImageSet, i: int) -> Image.Image:
    return Image.fromarray(s.images[i].permute(1, 2, 0).numpy())


def voc_palette() -> list[int]:
    """The 256-colour palette of VOC's indexed PNGs: the bits of a class index spread over R, G, B from the top."""
    palette = []
    for k in range(256):
        rgb, c = [0, 0, 0], k
        for bit in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - bit)
            c >>= 3
        palette += rgb
    return palette


def write_voc(data: Dataset | ImageSet, root: str | Path, categories: Sequence[str] | None = None) -> Path:
    """A VOC tree under ``root``: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (indexed: 0 background,
    k = ``categories[k - 1]``, default the set's ``classes``), ``SegmentationObject/<id>.png`` (with an
    ``instances`` field), ``Annotations/<id>.xml`` (one ``<object>`` with ``<name>`` and ``<bndbox>`` per box),
    ``ImageSets/{Main,Segmentation}/{train,val,trainval}.txt`` and ``labels.txt`` (background, then the
    categories). Returns ``root``."""
    splits = _splits(data)
    names = _categories(splits, categories)
    root = Path(root)
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject", "Annotations", "ImageSets/Main",
                "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    palette, ids = voc_palette(), {}
    for split, s in splits.items():
        ids[split] = [f"{split}_{i:06d}" for i in range(len(s))]
        h, w = s.images.shape[-2:]
        for i, name in enumerate(ids[split]):
            _rgb(s, i).save(root / "JPEGImages" / f"{name}.jpg", quality=95, subsampling=0)
            for field, folder in (("segmentation", "SegmentationClass"), ("instances", "SegmentationObject")):
                if field in s.fields:
                    png = Image.fromarray(s.fields[field][i].numpy())  # mode L, then P with the same indices
                    png.putpalette(palette)
                    png.save(root / folder / f"{name}.png")
            ann = ET.Element("annotation")
            for tag, text in (("folder", root.name), ("filename", f"{name}.jpg")):
                ET.SubElement(ann, tag).text = text
            size = ET.SubElement(ann, "size")
            for tag, v in (("width", w), ("height", h), ("depth", 3)):
                ET.SubElement(size, tag).text = str(v)
            ET.SubElement(ann, "segmented").text = "1"
            for c, (x0, y0, x1, y1) in _objects(s, i):
                obj = ET.SubElement(ann, "object")
                truncated = x0 <= 0 or y0 <= 0 or x1 >= w or y1 >= h
                for tag, text in (("name", names[c - 1]), ("pose", "Unspecified"), ("truncated", str(int(truncated))),
                                  ("difficult", "0")):
                    ET.SubElement(obj, tag).text = text
                box = ET.SubElement(obj, "bndbox")
                for tag, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
                    ET.SubElement(box, tag).text = str(round(v))
            ET.ElementTree(ann).write(root / "Annotations" / f"{name}.xml", encoding="utf-8")
    for folder in ("Main", "Segmentation"):
        for split, names_ in [*ids.items(), ("trainval", [n for v in ids.values() for n in v])]:
            (root / "ImageSets" / folder / f"{split}.txt").write_text("".join(f"{n}\n" for n in names_))
    (root / "labels.txt").write_text("".join(f"{n}\n" for n in ["background", *names]))
    return root


def write_coco(data: Dataset | ImageSet, root: str | Path, categories: Sequence[str] | None = None) -> dict[str, Path]:
    """COCO files under ``root`` (the COCO 2017 layout), per split: ``<split>/<id>.jpg``,
    ``annotations/instances_<split>.json`` (images; annotations with ``bbox`` [x, y, w, h], ``category_id``,
    ``area`` = visible pixels with an ``instances`` field else w * h, ``iscrowd`` 0, no ``segmentation``;
    categories 1.. = ``categories``, default the set's ``classes``) and, with a ``text`` field,
    ``annotations/captions_<split>.json``. Returns {split: instances JSON path}."""
    splits = _splits(data)
    names = _categories(splits, categories)
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    out = {}
    for split, s in splits.items():
        (root / split).mkdir(exist_ok=True)
        h, w = s.images.shape[-2:]
        images, anns = [], []
        areas = None
        if "instances" in s.fields:
            m = s.fields["boxes"].shape[1]
            areas = (s.fields["instances"].flatten(1).long()[:, :, None] == torch.arange(1, m + 1)).sum(1).tolist()
        for i in range(len(s)):
            file_name = f"{i:06d}.jpg"
            _rgb(s, i).save(root / split / file_name, quality=95, subsampling=0)
            images.append({"id": i + 1, "file_name": file_name, "width": int(w), "height": int(h)})
            for j, (c, (x0, y0, x1, y1)) in enumerate(_objects(s, i)):
                area = areas[i][j] if areas is not None else (x1 - x0) * (y1 - y0)
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c,
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(area), "iscrowd": 0})
        cats = [{"id": k + 1, "name": n, "supercategory": "object"} for k, n in enumerate(names)]
        info = {"description": f"selfsup export ({split})"}
        out[split] = root / "annotations" / f"instances_{split}.json"
        out[split].write_text(json.dumps({"info": info, "images": images, "annotations": anns, "categories": cats}))
        if "text" in s.fields:
            texts = decode_texts(s.fields["text"])
            caps = [{"id": i + 1, "image_id": i + 1, "caption": t} for i, t in enumerate(texts)]
            (root / "annotations" / f"captions_{split}.json").write_text(
                json.dumps({"info": info, "images": images, "annotations": caps}))
    return out

