"""One embedding per image, from a folder (any layout) or an ImageSet, written as .pt, .npy or .csv."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from selfsup.data.folder import load_images
from selfsup.data.sources import ImageSet
from selfsup.data.stream import printable
from selfsup.errors import UserError
from selfsup.evaluate.features import extract_features
from selfsup.use import output_file

FORMATS = (".pt", ".npy", ".csv")


def embed(backbone: nn.Module, data: str | Path | ImageSet, image_size: int | None = None, batch_size: int = 256,
          device: str | torch.device | None = None, show_progress: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Backbone features ``(N, D)`` (float32, CPU, not normalised) and the N image paths, row for row.

    ``data`` is a folder of images (any layout; unreadable files are skipped and listed) or an
    :class:`~selfsup.data.ImageSet` (an ImageSet without paths gets its positions, ``"0"``, ``"1"``, ...).
    ``image_size`` is the side the backbone sees: pass the one it was trained at (``run.config.image_size``);
    default: the images' own. ``device`` moves the backbone there (default: where it is).
    """
    images = data if isinstance(data, ImageSet) else load_images(data, image_size)
    if not len(images):
        raise UserError("no images to embed")
    size = image_size or int(images.images.shape[-1])
    if device is not None:
        backbone.to(device)
    chunks = []
    with tqdm(total=len(images), unit="img", desc="embedding", disable=not show_progress, mininterval=1.0) as bar:
        for start in range(0, len(images), batch_size):
            chunks.append(extract_features(backbone, images.images[start : start + batch_size], size, batch_size,
                                           device))
            bar.update(len(chunks[-1]))
    return torch.cat(chunks), images.paths or [str(i) for i in range(len(images))]


def save_embeddings(features: torch.Tensor, paths: list[str], out: str | Path,
                    labels: list[str] | None = None) -> list[Path]:
    """Write ``features`` in the format of ``out``'s suffix; returns the files written.

    ``.pt``: ``{"embeddings": tensor, "paths": [...]}``; ``.npy``: the array, with the paths one a line in
    ``OUT.paths.txt`` beside it; ``.csv``: a header, then ``path[,label],e0,e1,...`` per image. Text is UTF-8,
    and a file name that is not UTF-8 is written as its own bytes (so that the path written opens the file).
    """
    out = output_file(out, FORMATS)
    suffix = out.suffix.lower()
    if suffix == ".pt":
        torch.save({"embeddings": features, "paths": list(paths)}, out)
        return [out]
    if suffix == ".npy":
        with open(out, "wb") as f:
            np.save(f, features.numpy())
        listing = _listing(out)
        listing.write_text("".join(f"{p}\n" for p in paths), encoding="utf-8", errors="surrogateescape")
        return [out, listing]
    with open(out, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["path", *(["label"] if labels else []), *(f"e{i}" for i in range(features.shape[1]))])
        for i, row in enumerate(features.tolist()):
            w.writerow([paths[i], *([labels[i]] if labels else []), *row])
    return [out]


def _listing(npy: Path) -> Path:
    """The file that lists the paths of a ``.npy`` file's rows: ``OUT.paths.txt``."""
    return npy.with_suffix(".paths.txt")


def load_embeddings(path: str | Path) -> tuple[torch.Tensor, list[str], list[str] | None]:
    """Read a file written by :func:`save_embeddings` (``selfsup embed``): features ``(N, D)`` float32, the N
    paths, and the N labels (``.csv`` files of class folders; else None)."""
    p = Path(path)
    suffix, labels = p.suffix.lower(), None

    def bad(why: str) -> UserError:
        return UserError(f"'{printable(p)}' is not an embeddings file written by selfsup embed ({why})")

    try:
        if suffix == ".pt":
            saved = torch.load(p, map_location="cpu", weights_only=True)
            if not isinstance(saved, dict) or not {"embeddings", "paths"} <= saved.keys():
                raise bad("no 'embeddings' and 'paths' in it")
            features, paths = saved["embeddings"], saved["paths"]
        elif suffix == ".npy":
            features = torch.from_numpy(np.load(p, allow_pickle=False))
            paths = _listing(p).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        elif suffix == ".csv":
            with open(p, newline="", encoding="utf-8", errors="surrogateescape") as f:
                rows = list(csv.reader(f))
            first = 2 if rows and rows[0][1:2] == ["label"] else 1
            if not rows or rows[0][:1] != ["path"]:
                raise bad("its header does not start with 'path'")
            paths = [r[0] for r in rows[1:]]
            labels = [r[1] for r in rows[1:]] if first == 2 else None
            features = torch.tensor([[float(v) for v in r[first:]] for r in rows[1:]])
        else:
            raise bad(f"end it in {', '.join(FORMATS)}")
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        raise bad(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or not isinstance(paths, list) \
            or len(paths) != len(features) or not len(paths):
        raise bad("it must hold one row of numbers per path, and at least one")
    return features.float(), [str(x) for x in paths], labels
