"""Nearest neighbours by centred cosine similarity, shown as a picture grid and listed in a CSV.

The similarity is the cosine of the features after subtracting the mean feature of the index. Features after
a ReLU are non-negative, so they all lie in one orthant and the plain cosine of two unrelated images is high
(0.9 and more is common) and crowded near 1, which reads as "almost identical". Centring removes the
direction every image shares: unrelated images score around 0, identical ones 1, and nearest-neighbour search
works better on centred, L2-normalised features (Wang et al., "SimpleShot: Revisiting Nearest-Neighbor
Classification for Few-Shot Learning", arXiv 2019). The ranking is by this similarity, and exact.

Search is exact: a chunked matmul + top-k in torch, or faiss (``IndexFlatIP``) when it is installed
and the index holds more than :data:`FAISS_MIN` images. faiss is not a dependency.
"""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from selfsup.data.sources import ImageSet
from selfsup.data.stream import printable
from selfsup.errors import UserError

FAISS_MIN = 200_000
GRID_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")
MAX_GRID_ROWS = 32
_CHUNK_ELEMENTS = 1 << 25  # similarities held at once by the torch search (128 MB of float32)
SIMILARITY = "centred_cosine"  # the CSV's name for the similarity
SIMILARITY_TEXT = "centred cosine similarity (features minus the index mean: unrelated ~ 0, identical = 1)"


@dataclass
class Neighbours:
    """The ``k`` nearest ``index`` images of every query: centred cosine similarities (see the module) and
    index rows, best first."""

    queries: ImageSet
    index: ImageSet
    similarity: torch.Tensor  # (Q, k)
    positions: torch.Tensor  # (Q, k) int64 rows of index


def nearest(queries: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred cosine similarities and positions ``(Q, min(k, N))`` of each query's nearest index rows, best
    first: both sides minus the index's mean feature, then cosine (see the module).

    Ties go to the lower position (torch search), so an image ranks before its later duplicates.
    """
    if k <= 0:
        raise UserError(f"k must be a positive integer (got {k})")
    k = min(k, len(index))
    mean = index.float().mean(0, dtype=torch.float64).float()
    q, x = F.normalize(queries.float() - mean, dim=1), F.normalize(index.float() - mean, dim=1)
    if len(x) > FAISS_MIN and importlib.util.find_spec("faiss") is not None:
        import faiss

        search = faiss.IndexFlatIP(x.shape[1])
        search.add(x.cpu().numpy())
        sims, pos = search.search(q.cpu().numpy(), k)
        return torch.from_numpy(sims), torch.from_numpy(pos).long()
    rows = max(1, _CHUNK_ELEMENTS // len(x))
    sims, pos = [], []
    for start in range(0, len(q), rows):
        s, p = (q[start : start + rows] @ x.T).topk(k, dim=1)
        p, order = p.sort(dim=1)  # order ties by position: a stable sort by position, then by similarity
        s, order = s.gather(1, order).sort(dim=1, descending=True, stable=True)
        sims.append(s)
        pos.append(p.gather(1, order))
    return torch.cat(sims), torch.cat(pos)


def _name(images: ImageSet, i: int) -> str:
    return images.paths[i] if images.paths else str(i)


def _label(images: ImageSet, i: int) -> str | None:
    """The class name of image ``i``, printable (a folder name that is not UTF-8 shows its bytes as ``\\xff``)."""
    if not images.labeled:
        return None
    c = int(images.labels[i])
    return printable(images.classes[c]) if images.classes and c < len(images.classes) else str(c)


def write_neighbours_csv(nb: Neighbours, out: str | Path) -> None:
    """One row per (query, rank): ``query, rank, neighbour, centred_cosine`` (paths, or positions without paths).

    UTF-8; a file name that is not UTF-8 is written as its own bytes, so that the path written opens the file."""
    with open(out, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["query", "rank", "neighbour", SIMILARITY])
        for qi, (sims, pos) in enumerate(zip(nb.similarity.tolist(), nb.positions.tolist())):
            for rank, (s, p) in enumerate(zip(sims, pos), start=1):
                w.writerow([_name(nb.queries, qi), rank, _name(nb.index, p), round(s, 6)])


def plot_neighbours(nb: Neighbours, out: str | Path, title: str | None = None) -> None:
    """A grid: one query per row (first column), its neighbours to the right with their similarity.

    With labels, each image shows its class, neighbours in green when it matches the query's, else red.
    At most :data:`MAX_GRID_ROWS` queries are drawn (the CSV lists them all).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = min(len(nb.queries), MAX_GRID_ROWS), nb.positions.shape[1] + 1
    fig, axes = plt.subplots(rows, cols, figsize=(max(1.1 * cols, 5.0), 1.3 * rows + 0.6), squeeze=False)
    for r in range(rows):
        query_label = _label(nb.queries, r)
        cells = [(nb.queries, r, "query", "black")]
        for s, p in zip(nb.similarity[r].tolist(), nb.positions[r].tolist()):
            label = _label(nb.index, p)
            color = "black" if label is None or query_label is None else "green" if label == query_label else "red"
            cells.append((nb.index, p, f"{s:.2f}", color))
        for ax, (images, i, text, color) in zip(axes[r], cells):
            label = _label(images, i)
            ax.imshow(images.images[i].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            ax.set_title(text if label is None else f"{text}\n{label}", fontsize=7, color=color)
            ax.set_xticks([])
            ax.set_yticks([])
    shown = "" if rows == len(nb.queries) else f" (first {rows} of {len(nb.queries)} queries)"
    fig.suptitle(f"{printable(title or 'nearest neighbours')}{shown}\nby {SIMILARITY_TEXT}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_retrieval(index: ImageSet, index_feats: torch.Tensor, queries: ImageSet, query_feats: torch.Tensor,
                   out: str | Path, n: int = 6, k: int = 8, title: str | None = None) -> None:
    """``n`` queries (a fixed random pick) next to their ``k`` nearest index images: what the features mean."""
    pick = torch.randperm(len(queries), generator=torch.Generator().manual_seed(0))[:n]
    plot_neighbours(Neighbours(queries.subset(pick), index, *nearest(query_feats[pick], index_feats, k)), out, title)
