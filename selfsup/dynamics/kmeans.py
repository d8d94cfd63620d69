"""Clustering machinery of DeepCluster (Caron, Bojanowski, Joulin, Douze, ECCV 2018), reused by JULE, AND and BoWNet.

Every epoch DeepCluster computes the features of the whole training set, PCA-reduces them to 256 dimensions
with whitening and L2-normalises them (:func:`preprocess_features`), clusters them with k-means (faiss, 20 Lloyd
iterations, :func:`kmeans`) and trains on the cluster indices as pseudo-labels, drawing the images uniformly over
the clusters (:func:`cluster_balanced_weights`).

The torch path runs on the device of the features, in chunks whose size is bounded whatever ``N`` (about
``2**23`` elements each). faiss, when installed, replaces the Lloyd loop as in the paper's code.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import UserError

_CHUNK_ELEMENTS = 2**23
SPLIT_EPS = 1 / 1024  # faiss's relative perturbation of a split centroid ("a bit above float16's epsilon")


def _rows(width: int) -> int:
    """Rows per chunk so that a (rows, width) block holds about ``_CHUNK_ELEMENTS`` values."""
    return max(1, _CHUNK_ELEMENTS // max(1, width))


def _gen_device(generator: torch.Generator | None, default: torch.device) -> torch.device:
    return generator.device if generator is not None else default


def pca_whitening(x: Tensor, dim: int = 256, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Fit DeepCluster's PCA whitening (faiss ``PCAMatrix(D, dim, eigen_power=-0.5)``) on the rows of ``x`` (N, D).

    Returns ``mean`` (D,) and ``matrix`` (D, d), float64 on ``x``'s device, such that ``(x - mean) @ matrix``
    holds the ``d`` leading principal components, each divided by ``sqrt(eigenvalue + eps)``: its covariance is
    ``diag(eigenvalue / (eigenvalue + eps))``, the identity for eigenvalues well above ``eps``. The covariance is
    the population one (divided by N; faiss does not divide at all, a global scale the L2 step removes) and is
    accumulated in float64 over row chunks. ``d = min(dim, D, N - 1)``: centred data has at most ``N - 1``
    non-zero principal components, and whitening a null one would only amplify rounding noise.
    """
    n, width = x.shape
    if n < 2:
        raise UserError(f"PCA whitening needs at least 2 feature vectors (got {n})")
    if dim < 1:
        raise UserError(f"PCA whitening: the output dimension must be >= 1 (got {dim})")
    chunks = x.detach().split(_rows(width))
    mean = sum(c.double().sum(0) for c in chunks) / n
    cov = torch.zeros(width, width, dtype=torch.float64, device=x.device)
    for c in chunks:
        centred = c.double() - mean
        cov.addmm_(centred.T, centred)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov / n)  # ascending
    d = min(dim, width, n - 1)
    eigenvalues, eigenvectors = eigenvalues.flip(0)[:d], eigenvectors.flip(1)[:, :d]
    return mean, eigenvectors * (eigenvalues.clamp(min=0) + eps).rsqrt()


def preprocess_features(x: Tensor, dim: int = 256, eps: float = 1e-5) -> Tensor:
    """DeepCluster's feature preprocessing: PCA to ``d = min(dim, D, N - 1)`` dimensions with whitening
    (:func:`pca_whitening`), then L2 normalisation of each row. (N, D) -> (N, d), computed in float64 and
    returned in float32 (float64 for float64 input)."""
    mean, matrix = pca_whitening(x, dim, eps)
    out = torch.empty(x.shape[0], matrix.shape[1], dtype=torch.promote_types(x.dtype, torch.float32),
                      device=x.device)
    rows = _rows(x.shape[1])
    for chunk, dst in zip(x.detach().split(rows), out.split(rows)):
        dst.copy_(F.normalize((chunk.double() - mean) @ matrix, dim=1))
    return out


def nearest_centroid(x: Tensor, centroids: Tensor) -> Tensor:
    """Index (N,) int64 of the centroid nearest to each row of ``x`` in squared Euclidean distance, computed as
    ``|c|^2 - 2 x.c`` (``|x|^2`` is the same for every centroid) by chunked matmul in ``x``'s dtype."""
    c = centroids.to(x.dtype)
    sq = c.pow(2).sum(1)
    return torch.cat([torch.addmm(sq, chunk, c.T, alpha=-2).argmin(1) for chunk in x.split(_rows(len(c)))])


def nearest_centroid_map(x: Tensor, centroids: Tensor) -> Tensor:
    """Index (B, h, w) of the centroid (k, C) nearest to every position of the maps ``x`` (B, C, h, w), in float32
    (:func:`nearest_centroid`): e.g. each position's quantised colour."""
    return nearest_centroid(x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).float(), centroids).view(x.shape[0],
                                                                                                    *x.shape[2:])


def _centroids(x: Tensor, assignments: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Means (k, D) float64 of the rows assigned to each cluster (zero for an empty one) and the sizes (k,).
    Each chunk is summed in ``x``'s dtype (index_add, no loop over rows or clusters), the chunks in float64."""
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    rows = _rows(x.shape[1])
    for chunk, idx in zip(x.split(rows), assignments.split(rows)):
        sums += torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, idx, chunk)
    counts = torch.bincount(assignments, minlength=k).double()
    return sums / counts.clamp(min=1).unsqueeze(1), counts


def split_empty_clusters(centroids: Tensor, counts: Tensor, generator: torch.Generator | None = None) -> int:
    """faiss's handling of empty clusters (``split_clusters`` in Clustering.cpp), in place; returns their number.

    Each empty cluster, in index order, takes over half of a donor cluster drawn with probability proportional
    to ``size - 1`` (a singleton is never split; faiss approximates this law by a cyclic accept/reject scan):
    the donor's centroid is copied and both copies get the symmetric relative perturbation ``1 +- SPLIT_EPS``
    (even coordinates ``1 + eps`` for the new centroid and ``1 - eps`` for the donor, odd ones the reverse), and
    the donor's size is shared evenly between the two. Loops over the empty clusters only (usually none).
    """
    empty = (counts == 0).nonzero().flatten().tolist()
    if not empty:
        return 0
    sign = torch.full((centroids.shape[1],), SPLIT_EPS, dtype=centroids.dtype, device=centroids.device)
    sign[1::2] = -SPLIT_EPS
    for ci in empty:
        weights = (counts - 1).clamp(min=0).to(_gen_device(generator, counts.device))
        donor = torch.multinomial(weights, 1, generator=generator).to(counts.device)
        centroids[ci] = centroids[donor].squeeze(0) * (1 + sign)
        centroids[donor] = centroids[donor] * (1 - sign)
        counts[ci] = counts[donor].squeeze(0) / 2
        counts[donor] = counts[donor] - counts[ci]
    return len(empty)


def _faiss_kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator | None,
                  init: Tensor | None) -> tuple[Tensor, Tensor]:
    """faiss.Kmeans with DeepCluster's settings (no subsampling); seeded from ``generator``. Untested here."""
    import faiss

    seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=_gen_device(generator, x.device)))
    data = x.detach().float().cpu().contiguous().numpy()
    km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, max_points_per_centroid=10**7,
                      min_points_per_centroid=1, gpu=x.is_cuda)
    km.train(data, init_centroids=None if init is None else init.detach().float().cpu().numpy())
    _, labels = km.index.search(data, 1)
    return (torch.from_numpy(km.centroids).to(x.device, x.dtype),
            torch.from_numpy(labels[:, 0]).to(x.device, torch.int64))


def kmeans(x: Tensor, k: int, iters: int = 20, generator: torch.Generator | None = None,
           use_faiss: bool | None = None, init: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """k-means of the rows of ``x`` (N, D) into ``k`` clusters: ``(centroids (k, D), assignments (N,) int64)``.

    Lloyd's algorithm as DeepCluster runs it through faiss: ``k`` distinct rows drawn with ``generator`` start
    the centroids (or ``init``, (k, D)); each of ``iters`` iterations assigns every row to its nearest centroid
    (:func:`nearest_centroid`), moves each centroid to the mean of its rows and splits a cluster into every
    empty one (:func:`split_empty_clusters`); the assignments returned are to the final centroids. Sums are
    accumulated in float64; distances are computed in ``x``'s dtype.

    ``use_faiss``: None uses faiss when installed, True requires it, False forces the torch path. faiss draws
    its own initial rows and reseeds differently, so its result differs from the torch path's for one seed.
    """
    n, width = x.shape
    if not 1 <= k <= n:
        raise UserError(f"k-means: the number of clusters must be between 1 and the number of samples ({n}); got {k}")
    faiss_found = importlib.util.find_spec("faiss") is not None
    if use_faiss and not faiss_found:
        raise UserError("k-means: use_faiss=True but faiss is not installed (pip install faiss-cpu or faiss-gpu)")
    if init is not None and init.shape != (k, width):
        raise ValueError(f"k-means: init must have shape ({k}, {width}), got {tuple(init.shape)}")
    x = x.detach()
    if faiss_found and use_faiss is not False:
        return _faiss_kmeans(x, k, iters, generator, init)
    if init is None:
        picks = torch.randperm(n, generator=generator, device=_gen_device(generator, torch.device("cpu")))[:k]
        init = x[picks.to(x.device)]
    centroids = init.to(x.device, torch.float64, copy=True)
    for _ in range(iters):
        centroids, counts = _centroids(x, nearest_centroid(x, centroids), k)
        split_empty_clusters(centroids, counts, generator)
    centroids = centroids.to(x.dtype)
    return centroids, nearest_centroid(x, centroids)


def subset_kmeans(x: Tensor, k: int, iters: int, seed: int, max_points: int) -> Tensor:
    """The centroids ``(k, D)`` of :func:`kmeans` (the torch path) on at most ``max_points`` rows of ``x`` (N, D), a
    random subset: one CPU generator seeded with ``seed`` draws the subset, then k-means' initial rows."""
    g = torch.Generator().manual_seed(seed)
    points = x[torch.randperm(len(x), generator=g)[:max_points]]
    return kmeans(points, k, iters, g, use_faiss=False)[0]


def cluster_balanced_weights(assignments: Tensor, k: int) -> Tensor:
    """Per-sample weights (N,) float32 summing to 1, ``1 / size`` of the sample's cluster, normalised: every
    non-empty cluster carries the same total weight, so ``torch.multinomial(weights, N, replacement=True)``
    draws clusters uniformly, as DeepCluster's ``UnifLabelSampler`` (which instead takes ``N / #clusters``
    images per cluster, without replacement within a cluster where it can)."""
    counts = torch.bincount(assignments, minlength=k)
    if counts.numel() != k:
        raise ValueError(f"cluster_balanced_weights: assignments must lie in [0, {k})")
    weights = counts[assignments].double().reciprocal()
    return (weights / weights.sum()).float()
