"""One embedding per image, from a folder (any layout) or an ImageSet, written as .pt, .npy or .csv."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from selfsup.data.folder import load_images
from selfsup.data.sources import ImageSet
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
    ``OUT.paths.txt`` beside it; ``.csv``: a header, then ``path[,label],e0,e1,...`` per image.
    """
    out = output_file(out, FORMATS)
    suffix = out.suffix.lower()
    if suffix == ".pt":
        torch.save({"embeddings": features, "paths": list(paths)}, out)
        return [out]
    if suffix == ".npy":
        with open(out, "wb") as f:
            np.save(f, features.numpy())
        listing = out.with_suffix(".paths.txt")
        listing.write_text("".join(f"{p}\n" for p in paths))
        return [out, listing]
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", *(["label"] if labels else []), *(f"e{i}" for i in range(features.shape[1]))])
        for i, row in enumerate(features.tolist()):
            w.writerow([paths[i], *([labels[i]] if labels else []), *row])
    return [out]
