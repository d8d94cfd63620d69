"""Retrieval with a trained encoder: embed an index folder and queries, then find each query's neighbours
(:mod:`selfsup.evaluate.neighbours` searches and draws)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from selfsup.data.folder import load_images
from selfsup.data.sources import ImageSet
from selfsup.evaluate.neighbours import Neighbours, nearest
from selfsup.use.embed import embed


def retrieve(backbone: nn.Module, data: str | Path | ImageSet, query: str | Path | ImageSet, k: int = 8,
             image_size: int | None = None, batch_size: int = 256, device: str | torch.device | None = None,
             show_progress: bool = False) -> Neighbours:
    """Embed ``data`` (the index) and ``query`` (folders, one image file, or ImageSets), then find neighbours."""
    index = data if isinstance(data, ImageSet) else load_images(data, image_size)
    size = image_size or int(index.images.shape[-1])
    queries = query if isinstance(query, ImageSet) else load_images(query, size)
    index_feats, _ = embed(backbone, index, size, batch_size, device, show_progress)
    query_feats, _ = embed(backbone, queries, size, batch_size, device, show_progress)
    return Neighbours(queries, index, *nearest(query_feats, index_feats, k))
