"""Retrieval with a trained encoder: each query's nearest images in an index, by centred cosine similarity
(:mod:`selfsup.evaluate.neighbours` searches and draws; it says why the features are centred).

The index is a folder of images, or the embeddings ``selfsup embed`` wrote (then nothing of it is embedded;
its images are decoded only to be drawn). A folder's embeddings are cached under ``$SELFSUP_CACHE`` (default
``~/.cache/selfsup``), keyed by a hash of the encoder's weights, of the decoded pixels and of the image side,
so a second query against the same folder embeds the query alone. A query that is itself in the index (the
same file, or an image with the same pixels) is not returned as its own neighbour unless ``include_self``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch
from torch import nn

from selfsup.data.folder import cache_dir, load_images
from selfsup.data.sources import ImageSet
from selfsup.data.stream import FileImages, UnreadableImage, decode_square, printable
from selfsup.errors import UserError
from selfsup.evaluate.neighbours import GRID_SUFFIXES, Neighbours, nearest, plot_neighbours, write_neighbours_csv
from selfsup.use import output_file
from selfsup.use.embed import FORMATS, embed, load_embeddings

CACHE_VERSION = 1  # part of every cache key: bump it when feature extraction changes
SELF_TOLERANCE = 0.05  # index rows this close to a query's features (relative distance) are compared pixel by pixel
_CHUNK_ELEMENTS = 1 << 24  # feature values (or pixels) gathered at once when looking for the query itself


class _IndexFiles(FileImages):
    """The images of an embeddings file, decoded when drawn or compared, as :func:`load_images` decodes them."""

    def load(self, i: int):
        try:
            return decode_square(self.paths[i], self.size, draft=False)
        except UnreadableImage:
            return super().load(i)  # a blank image, reported on one line


def _is_embeddings(data: object) -> bool:
    return isinstance(data, (str, os.PathLike)) and Path(data).suffix.lower() in FORMATS and Path(data).is_file()


def _embeddings_index(path: str | os.PathLike, image_size: int | None) -> tuple[ImageSet, torch.Tensor]:
    """The index an embeddings file describes (images decoded on demand) and its features."""
    if image_size is None:
        raise UserError(f"the image size that the embeddings in '{printable(path)}' were made at is needed to "
                        "decode their images: pass image_size")
    feats, paths, names = load_embeddings(path)
    classes = sorted(set(names)) if names else None
    labels = torch.tensor([classes.index(n) for n in names]) if classes else None
    return ImageSet(_IndexFiles(paths, image_size), labels, classes, paths), feats


def _cache_file(backbone: nn.Module, images: torch.Tensor, size: int) -> Path:
    """Where the embeddings of ``images`` by ``backbone`` at ``size`` are cached: named by a hash of the
    encoder (its class and every tensor of its state), of the pixels and of the side."""
    key = hashlib.sha1(f"{CACHE_VERSION}|{size}|{tuple(images.shape)}|{type(backbone).__qualname__}".encode())
    for name, t in backbone.state_dict().items():
        t = t.detach().cpu().contiguous()
        key.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        key.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    key.update(memoryview(images.contiguous().reshape(-1).numpy()))
    return cache_dir() / f"embeddings-{key.hexdigest()[:20]}.pt"


def index_features(backbone: nn.Module, index: ImageSet, image_size: int, batch_size: int = 256,
                   device: str | torch.device | None = None, show_progress: bool = False,
                   cache: bool = True) -> torch.Tensor:
    """:func:`~selfsup.use.embed.embed` of ``index``, cached (images held in memory only): a cache entry that
    is missing, unreadable or of the wrong shape is embedded again; one that cannot be written is skipped with
    a warning."""
    path = _cache_file(backbone, index.images, image_size) if cache and not index.streamed else None
    if path is not None and path.is_file():
        try:
            feats = torch.load(path, map_location="cpu", weights_only=True)["features"]
            if isinstance(feats, torch.Tensor) and feats.dim() == 2 and len(feats) == len(index):
                return feats
        except Exception:  # noqa: BLE001 - a truncated or corrupt entry (torch.load raises many kinds): embed again
            pass
    feats, _ = embed(backbone, index, image_size, batch_size, device, show_progress)
    if path is not None:
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"features": feats}, tmp)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            print(f"warning: cannot cache the embeddings in '{printable(path.parent)}' ({e.strerror or e}); set "
                  "SELFSUP_CACHE to a writable folder", file=sys.stderr)
    return feats


def _close(queries: torch.Tensor, index: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``(Q, m)``: index row ``pos[q, j]`` lies within :data:`SELF_TOLERANCE` (relative) of query ``q``."""
    rows = max(1, _CHUNK_ELEMENTS // max(1, pos.shape[1] * index.shape[1]))
    parts = [(index[pos[s : s + rows]] - queries[s : s + rows, None]).norm(dim=2)
             <= SELF_TOLERANCE * queries[s : s + rows].norm(dim=1, keepdim=True) for s in range(0, len(pos), rows)]
    return torch.cat(parts) if parts else torch.zeros(pos.shape, dtype=torch.bool)


def _itself(queries: ImageSet, query_feats: torch.Tensor, index: ImageSet, index_feats: torch.Tensor,
            pos: torch.Tensor) -> torch.Tensor:
    """``(Q, m)``: index row ``pos[q, j]`` is query ``q`` itself: the same file (absolute paths), or the same
    pixels (compared only where the features are close, so that few images are decoded)."""
    same = torch.zeros(pos.shape, dtype=torch.bool)
    if queries.paths and index.paths:
        row_of = {os.path.abspath(p): q for q, p in enumerate(queries.paths)}
        found, inverse = pos.unique(return_inverse=True)
        owner = torch.tensor([row_of.get(os.path.abspath(index.paths[i]), -1) for i in found.tolist()])
        same = owner[inverse] == torch.arange(len(pos))[:, None]
    qi, ji = (_close(query_feats, index_feats, pos) & ~same).nonzero(as_tuple=True)
    pairs = max(1, _CHUNK_ELEMENTS // (3 * index.images.shape[-1] ** 2))
    for s in range(0, len(qi), pairs):
        q, j = qi[s : s + pairs], ji[s : s + pairs]
        a, b = queries.images[q], index.images[pos[q, j]]
        if a.shape == b.shape:
            same[q, j] = (a == b).flatten(1).all(1)
    return same


def _search(queries: ImageSet, query_feats: torch.Tensor, index: ImageSet, index_feats: torch.Tensor, k: int,
            include_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`nearest`, less each query itself: asks for one more neighbour than ``k``, and twice as many
    again while some query loses more (an index with copies of it)."""
    n = len(index_feats)
    m = min(n, k if include_self else k + 1)
    while True:
        sims, pos = nearest(query_feats, index_feats, m)
        drop = torch.zeros(pos.shape, dtype=torch.bool) if include_self else \
            _itself(queries, query_feats, index, index_feats, pos)
        kept = int((~drop).sum(1).min())
        if m == n or kept >= k:
            break
        m = min(n, 2 * m)
    if kept == 0:
        raise UserError("the index holds no image other than the query itself")
    order = drop.to(torch.uint8).argsort(dim=1, stable=True)[:, : min(k, kept)]  # kept columns, in rank order
    return sims.gather(1, order), pos.gather(1, order)


def retrieve(backbone: nn.Module, data: str | Path | ImageSet, query: str | Path | ImageSet, k: int = 8,
             image_size: int | None = None, batch_size: int = 256, device: str | torch.device | None = None,
             show_progress: bool = False, include_self: bool = False, cache: bool = True) -> Neighbours:
    """The ``k`` nearest index images of every query, by centred cosine similarity (best first).

    ``data`` (the index) is a folder of images (any layout), an ImageSet, or an embeddings file that
    ``selfsup embed`` wrote with the same encoder (``.pt``, ``.npy`` with its ``.paths.txt``, or ``.csv``):
    then nothing of it is embedded, and ``image_size`` must be the one it was embedded at. ``query`` is one
    image, a folder or an ImageSet. A folder's embeddings are cached (``cache``; see the module). An index
    image that is the query itself (the same file, or the same pixels) is left out unless ``include_self``.
    """
    if k <= 0:
        raise UserError(f"k must be a positive integer (got {k})")
    index_feats = None
    if _is_embeddings(data):
        index, index_feats = _embeddings_index(data, image_size)
    else:
        index = data if isinstance(data, ImageSet) else load_images(data, image_size)
        image_size = image_size or int(index.images.shape[-1])
    queries = query if isinstance(query, ImageSet) else load_images(query, image_size)  # before any embedding
    if index_feats is None:
        index_feats = index_features(backbone, index, image_size, batch_size, device, show_progress, cache)
    query_feats, _ = embed(backbone, queries, image_size, batch_size, device, show_progress)
    if query_feats.shape[1] != index_feats.shape[1]:
        raise UserError(f"the index holds embeddings of {index_feats.shape[1]} values and the encoder gives "
                        f"{query_feats.shape[1]}: embed the index with the same encoder")
    return Neighbours(queries, index, *_search(queries, query_feats, index, index_feats, k, include_self))


def retrieval_outputs(out: str | Path) -> tuple[Path, Path]:
    """The picture ``out`` and the CSV beside it (``.csv``), both checked to be writable before any work."""
    grid = output_file(out, GRID_SUFFIXES)
    return grid, output_file(grid.with_suffix(".csv"))


def save_retrieval(nb: Neighbours, grid: Path, table: Path, title: str | None = None) -> None:
    """Draw ``nb`` into ``grid`` and list it in ``table`` (see :func:`retrieval_outputs`)."""
    plot_neighbours(nb, grid, title)
    write_neighbours_csv(nb, table)
