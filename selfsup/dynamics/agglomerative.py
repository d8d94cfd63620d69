"""JULE's agglomerative clustering (Yang, Parikh, Batra, "Joint Unsupervised Learning of Deep Representations and
Image Clusters", CVPR 2016, section 3), on the graph degree linkage affinity it adopts (Zhang, Wang, Zhao, Tang,
"Graph Degree Linkage: Agglomerative Clustering on a Directed Graph", ECCV 2012).

- The samples' directed K_s-nearest-neighbour graph (:func:`knn_graph`): W(i, j) = exp(-|x_i - x_j|^2 / sigma^2)
  where x_j is one of the K_s nearest neighbours of x_i, else 0; sigma^2 = a times the mean squared distance over
  the graph's edges (a = 1, K_s = 20 in the paper).
- The initial clusters (:func:`initial_clusters`): every sample joined with its nearest neighbour, i.e. the
  connected components of the 1-nearest-neighbour graph, as the authors' code initialises (clusters of a few
  samples: 1,347 digits give about 270).
- The affinity of two clusters (:func:`directed_affinity`, :func:`cluster_affinity`): the sum of the two directed
  affinities, each averaged over the source cluster's pairs,
  A(C_i, C_j) = |C_i|^-2 1^T W_{C_i,C_j} W_{C_j,C_i} 1 + |C_j|^-2 1^T W_{C_j,C_i} W_{C_i,C_j} 1.
  Only clusters joined by paths a -> c -> b of the kNN graph (a, b in one, c in the other) have a positive one.
- The merge criterion (section 3.2, :func:`agglomerate`): with A_1 >= ... >= A_Kc the affinities of C_i to its K_c
  nearest clusters (0 where it has fewer), merge the cluster maximising
  A_1 + lambda / (K_c - 1) * sum_{k=2..K_c} (A_1 - A_k) with its nearest cluster: a pair that is close, and
  closer than the cluster's other neighbours (K_c = 5, lambda = 1 in the paper).
- The unrolling rate eta (:func:`unrolled_steps`): a period merges ceil(eta * clusters) times (eta = 0.9, 0.2 on
  the face data sets), never below the target count.

Ties go to the smallest cluster id (cluster ids are ordered by their smallest sample; a merged cluster keeps the
smaller id). The graph is built in chunked matmuls on the features' device; the merging runs on the CPU in float64,
one merge at a time (each updates only the merged cluster's affinities, exactly: see :class:`_Agglomeration`).
"""

from __future__ import annotations

import heapq
import math
from typing import NamedTuple

import torch
from torch import Tensor

from selfsup.errors import UserError

#: the most squared distances a chunk of the kNN search holds at once (64 MiB in float32)
CHUNK_ELEMENTS = 2**24


class KnnGraph(NamedTuple):
    """The directed kNN graph: ``neighbours`` (N, K) int64, nearest first; ``weights`` (N, K) float64, the edge
    weights W(i, neighbours[i, k])."""

    neighbours: Tensor
    weights: Tensor


def knn_graph(x: Tensor, k: int = 20, a: float = 1.0) -> KnnGraph:
    """The K_s-nearest-neighbour graph of the rows of ``x`` (N, D) in Euclidean distance (``k`` is capped at
    N - 1), on ``x``'s device in its dtype, returned on the CPU: W(i, j) = exp(-d_ij^2 / sigma^2) with
    sigma^2 = ``a`` * the mean of d_ij^2 over the edges."""
    n = x.shape[0]
    if n < 2:
        raise UserError(f"agglomerative clustering needs at least 2 samples (got {n})")
    if k < 1:
        raise UserError(f"agglomerative clustering: the neighbours K_s must be >= 1 (got {k})")
    k, x = min(k, n - 1), x.detach()
    sq = x.pow(2).sum(1)
    rows = max(1, CHUNK_ELEMENTS // n)
    dists, neighbours = [], []
    for first in range(0, n, rows):
        chunk = x[first : first + rows]
        d = torch.addmm(sq[first : first + rows, None] + sq[None], chunk, x.T, alpha=-2).clamp_(min=0)
        own = torch.arange(len(chunk), device=x.device)
        d[own, own + first] = float("inf")  # not its own neighbour
        top = d.topk(k, dim=1, largest=False)
        dists.append(top.values)
        neighbours.append(top.indices)
    d2 = torch.cat(dists).double()
    sigma2 = (a * d2.mean()).clamp(min=torch.finfo(torch.float64).tiny)
    return KnnGraph(torch.cat(neighbours).cpu(), torch.exp(-d2 / sigma2).cpu())


def _compact(labels: Tensor) -> Tensor:
    """Ids 0 .. M-1 in the order of the given ones."""
    return torch.unique(labels, return_inverse=True)[1]


def initial_clusters(graph: KnnGraph) -> Tensor:
    """Every sample with its nearest neighbour: the connected components of the 1-NN graph as cluster ids (N,)
    int64, ordered by their smallest sample (label propagation with pointer jumping, a few passes)."""
    nearest = graph.neighbours[:, 0]
    labels = torch.arange(len(nearest))
    while True:
        new = torch.minimum(labels, labels[nearest])
        new = new.scatter_reduce(0, nearest, new, reduce="amin")  # back along the edge too
        new = new[new]
        if torch.equal(new, labels):
            return _compact(labels)
        labels = new


def _degrees(graph: KnnGraph, labels: Tensor, m: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every sample's weighted degrees into and out of the clusters it is not in: ``(vertex, cluster, into, out)``
    with into = sum_{a in C} W(a, vertex) and out = sum_{b in C} W(vertex, b), sorted by (cluster, vertex)."""
    n, k = graph.neighbours.shape
    src = torch.arange(n).repeat_interleave(k)
    dst, w = graph.neighbours.flatten(), graph.weights.flatten()
    keys = torch.cat([src * m + labels[dst], dst * m + labels[src]])  # out of src into dst's cluster; into dst
    unique, where = torch.unique(keys, return_inverse=True)
    out = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, where[: len(w)], w)
    into = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, where[len(w) :], w)
    vertex, cluster = unique // m, unique % m
    order = torch.argsort(cluster * n + vertex)
    outside = (labels[vertex] != cluster)[order]
    order = order[outside]
    return vertex[order], cluster[order], into[order], out[order]


def _directed(vertex: Tensor, cluster: Tensor, into: Tensor, out: Tensor, labels: Tensor, m: int) -> Tensor:
    """The sparse (M, M) directed affinities S(i -> j) = sum_{c in C_j} into(c, C_i) out(c, C_i) from degrees."""
    product = into * out
    keep = product > 0
    keys = cluster[keep] * m + labels[vertex[keep]]
    unique, where = torch.unique(keys, return_inverse=True)
    values = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, where, product[keep])
    return torch.sparse_coo_tensor(torch.stack([unique // m, unique % m]), values, (m, m),
                                   check_invariants=False).coalesce()


def directed_affinity(graph: KnnGraph, labels: Tensor) -> Tensor:
    """S(i -> j) = 1^T W_{C_i,C_j} W_{C_j,C_i} 1 for every two clusters of ``labels`` (N,) (ids 0 .. M-1): a sparse
    (M, M) float64 tensor holding the positive ones (none on the diagonal), computed from the graph's edges."""
    m = int(labels.max()) + 1
    return _directed(*_degrees(graph, labels, m), labels, m)


def cluster_affinity(directed: Tensor, sizes: Tensor) -> Tensor:
    """The symmetric A(C_i, C_j) = S(i -> j) / |C_i|^2 + S(j -> i) / |C_j|^2, sparse (M, M) float64, from the
    directed affinities (:func:`directed_affinity`) and the cluster sizes (M,)."""
    rows, cols = directed.indices()
    scaled = torch.sparse_coo_tensor(directed.indices(), directed.values() / sizes[rows].double() ** 2, directed.shape,
                                     check_invariants=False)
    return (scaled + scaled.t()).coalesce()


def unrolled_steps(clusters: int, target: int, eta: float) -> int:
    """The merges of one period: ceil(eta * clusters), never past ``target`` clusters."""
    return max(0, min(math.ceil(eta * clusters), clusters - target))


class _Agglomeration:
    """The clusters while merging. Per cluster: its samples, the degrees of the samples outside it into and out of
    it (:func:`_degrees`), its directed affinities to others (S, dicts), its symmetric ones (A, dicts), its K_c
    nearest clusters and its criterion, kept in a max-heap with lazy deletion.

    Merging j into i (i < j) changes only affinities that involve the merged cluster M, exactly:
    S(k -> M) = S(k -> i) + S(k -> j) (a sum over M's samples), while S(M -> k) sums into(c, M) out(c, M) over the
    samples c of C_k, recomputed from the merged degrees into(c, M) = into(c, C_i) + into(c, C_j) (likewise out).
    """

    def __init__(self, graph: KnnGraph, labels: Tensor, kc: int, lam: float) -> None:
        m = int(labels.max()) + 1
        self.labels, self.kc, self.lam = labels.clone(), kc, lam
        self.sizes = torch.bincount(labels, minlength=m)
        order = torch.argsort(labels, stable=True)
        self.members: list[Tensor | None] = list(order.split(self.sizes.tolist()))
        vertex, cluster, into, out = _degrees(graph, labels, m)
        counts = torch.bincount(cluster, minlength=m).tolist()
        self.degrees: list[tuple[Tensor, Tensor, Tensor] | None] = list(
            zip(vertex.split(counts), into.split(counts), out.split(counts)))
        directed = _directed(vertex, cluster, into, out, labels, m)
        self.out: list[dict[int, float]] = [{} for _ in range(m)]
        for (i, j), s in zip(directed.indices().T.tolist(), directed.values().tolist()):
            self.out[i][j] = s
        affinity = cluster_affinity(directed, self.sizes)
        self.near: list[dict[int, float]] = [{} for _ in range(m)]
        for (i, j), s in zip(affinity.indices().T.tolist(), affinity.values().tolist()):
            self.near[i][j] = s
        self.sizes = self.sizes.tolist()
        self.alive = m
        self.top: list[list[tuple[int, float]]] = [[] for _ in range(m)]
        self.version = [0] * m
        self.heap: list[tuple[float, int, int]] = []
        for i in range(m):
            self._rank(i)

    def _rank(self, i: int, top: list[tuple[int, float]] | None = None) -> None:
        """Set cluster i's K_c nearest clusters (all of them unless ``top`` is given) and push its criterion."""
        if top is None:
            top = heapq.nlargest(self.kc, self.near[i].items(), key=lambda e: (e[1], -e[0]))
        self.top[i] = top
        self.version[i] += 1
        if top:
            values = [v for _, v in top] + [0.0] * (self.kc - len(top))
            spread = sum(values[0] - v for v in values[1:]) / (self.kc - 1) if self.kc > 1 else 0.0
            heapq.heappush(self.heap, (-(values[0] + self.lam * spread), i, self.version[i]))

    def best(self) -> tuple[int, int] | None:
        """The pair the criterion merges (smaller id first), or None when no two clusters have a positive affinity."""
        while self.heap:
            _, i, version = self.heap[0]
            if version == self.version[i]:
                j = self.top[i][0][0]
                return min(i, j), max(i, j)
            heapq.heappop(self.heap)
        return None

    def nearest_centroids(self, features: Tensor) -> tuple[int, int]:
        """The two clusters with the nearest means of ``features`` (ties: the smallest ids), for when no two clusters
        are joined by the kNN graph any more."""
        ids = [i for i, m in enumerate(self.members) if m is not None]
        centroids = torch.stack([features[self.members[i]].double().mean(0) for i in ids])
        d = torch.cdist(centroids, centroids).fill_diagonal_(float("inf"))
        first, second = divmod(int(d.argmin()), len(ids))
        return ids[first], ids[second]

    def merge(self, i: int, j: int) -> None:
        """Merge cluster j into cluster i (i < j) and update every affinity that involves them."""
        touched = (self.near[i].keys() | self.near[j].keys()) - {i, j}
        self.labels[self.members[j]] = i
        self.members[i] = torch.cat([self.members[i], self.members[j]])
        self.sizes[i] += self.sizes[j]
        (vi, ii, oi), (vj, ij, oj) = self.degrees[i], self.degrees[j]
        vertex, into, out = torch.cat([vi, vj]), torch.cat([ii, ij]), torch.cat([oi, oj])
        outside = self.labels[vertex] != i
        vertex, where = torch.unique(vertex[outside], return_inverse=True)
        into = torch.zeros(len(vertex), dtype=torch.float64).index_add_(0, where, into[outside])
        out = torch.zeros(len(vertex), dtype=torch.float64).index_add_(0, where, out[outside])
        self.degrees[i] = (vertex, into, out)
        product = into * out
        keep = product > 0
        targets, where = torch.unique(self.labels[vertex[keep]], return_inverse=True)
        sums = torch.zeros(len(targets), dtype=torch.float64).index_add_(0, where, product[keep])
        merged_out = dict(zip(targets.tolist(), sums.tolist()))
        for k in touched:
            s = self.out[k].pop(i, 0.0) + self.out[k].pop(j, 0.0)
            if s > 0:
                self.out[k][i] = s
        for k in touched:
            self.near[k].pop(i, None)
            self.near[k].pop(j, None)
        self.out[i], self.near[i] = merged_out, {}
        for k in sorted(touched | merged_out.keys()):
            a = merged_out.get(k, 0.0) / self.sizes[i] ** 2 + self.out[k].get(i, 0.0) / self.sizes[k] ** 2
            if a > 0:
                self.near[i][k] = self.near[k][i] = a
            kept = self.top[k]
            if any(n in (i, j) for n, _ in kept):  # a nearest cluster left: rank all of them again
                self._rank(k)
            elif a > 0:  # the others stay; the merged cluster may join them
                self._rank(k, sorted([*kept, (i, a)], key=lambda e: (-e[1], e[0]))[: self.kc])
        self._rank(i)
        self.members[j] = self.degrees[j] = None
        self.out[j], self.near[j], self.top[j] = {}, {}, []
        self.version[j] += 1
        self.alive -= 1


def agglomerate(features: Tensor, labels: Tensor, steps: int, target: int = 1, k: int = 20, kc: int = 5,
                lam: float = 1.0, a: float = 1.0, graph: KnnGraph | None = None
                ) -> tuple[Tensor, list[tuple[int, int]]]:
    """``steps`` merges of JULE's agglomerative clustering (fewer where ``target`` clusters are reached first),
    starting from the clusters ``labels`` (N,) of the samples ``features`` (N, D).

    Each merge takes the cluster with the highest criterion (module docstring) and its nearest cluster. Where no two
    clusters have a positive affinity any more (the kNN graph joins none), the two with the nearest feature means
    are merged instead (ours; the authors' code merges such clusters into their nearest by mean beforehand).
    ``graph`` defaults to :func:`knn_graph` of ``features`` with ``k`` and ``a``. Returns the new cluster ids (N,)
    (0 .. M-1, ordered by smallest sample) and the merges done, as (kept, absorbed) pairs of ids of ``labels``
    made compact the same way.
    """
    if kc < 1 or target < 1 or lam < 0:
        raise UserError(f"agglomerative clustering: K_c and the target must be >= 1, lambda >= 0 (got {kc}, "
                        f"{target}, {lam})")
    graph = knn_graph(features, k, a) if graph is None else graph
    state = _Agglomeration(graph, _compact(labels.cpu()), kc, lam)
    merges: list[tuple[int, int]] = []
    while len(merges) < steps and state.alive > target:
        pair = state.best() or state.nearest_centroids(features.cpu())
        state.merge(*pair)
        merges.append(pair)
    return _compact(state.labels), merges
