"""JULE: the agglomerative clustering and the weighted triplet loss against plain-Python references of the paper's
formulas, the periods of the method, resume across them, and 2 processes vs 1."""

import math

import pytest
import torch

import selfsup
from selfsup.backbones import build_backbone
from selfsup.config import TrainConfig
from selfsup.data import load_data
from selfsup.data.views import eval_view, prepare
from selfsup.dynamics.agglomerative import (
    _Agglomeration,
    agglomerate,
    cluster_affinity,
    directed_affinity,
    initial_clusters,
    knn_graph,
    unrolled_steps,
)
from selfsup.engine.epoch import Epoch
from selfsup.errors import UserError
from selfsup.losses.clustering import cluster_negatives, weighted_triplet_loss
from selfsup.methods import Batch
from selfsup.methods.jule import JULE
from tests.helpers import Recorder, assert_same_state, assert_two_ranks_train_like_one

DIGITS = load_data("digits")


def blobs(n: int = 30, seed: int = 0, spread: float = 0.6) -> torch.Tensor:
    """``n`` 2-D points (float64) around 3 centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [3.0, 0.5], [1.0, 3.0]], dtype=torch.float64)
    return centres[torch.arange(n) % 3] + spread * torch.randn(n, 2, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------- plain-Python references of the paper's formulas
def ref_graph(points: list[list[float]], k: int, a: float = 1.0) -> tuple[list[list[int]], list[list[float]]]:
    """Each point's k nearest others and the dense W: exp(-d^2 / sigma^2), sigma^2 = a * mean d^2 over the edges."""
    n = len(points)
    d2 = [[sum((p - q) ** 2 for p, q in zip(points[i], points[j])) for j in range(n)] for i in range(n)]
    near = [sorted((j for j in range(n) if j != i), key=lambda j: (d2[i][j], j))[:k] for i in range(n)]
    sigma2 = a * sum(d2[i][j] for i in range(n) for j in near[i]) / (n * k)
    w = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in near[i]:
            w[i][j] = math.exp(-d2[i][j] / sigma2)
    return near, w


def ref_affinity(w: list[list[float]], ci: list[int], cj: list[int]) -> float:
    """A(C_i, C_j) = |C_i|^-2 1^T W_ij W_ji 1 + |C_j|^-2 1^T W_ji W_ij 1, as sums over the index triples."""
    def directed(s: list[int], t: list[int]) -> float:
        return sum(w[x][c] * w[c][y] for x in s for y in s for c in t)

    return directed(ci, cj) / len(ci) ** 2 + directed(cj, ci) / len(cj) ** 2


def ref_initial(near: list[list[int]]) -> list[int]:
    """Connected components of the 1-NN graph by union-find; ids ordered by smallest member."""
    parent = list(range(len(near)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, nb in enumerate(near):
        a, b = root(i), root(nb[0])
        parent[max(a, b)] = min(a, b)
    roots = sorted({root(i) for i in range(len(near))})
    return [roots.index(root(i)) for i in range(len(near))]


def ref_merges(points: list[list[float]], w: list[list[float]], labels: list[int], steps: int, target: int, kc: int,
               lam: float) -> list[tuple[int, int]]:
    """The merge sequence: the cluster maximising A_1 + lam / (kc - 1) sum_{k=2..kc} (A_1 - A_k) (its kc largest
    affinities, zeros where fewer) with its nearest; else the nearest means. Ties: smallest ids."""
    clusters: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        clusters.setdefault(c, []).append(i)
    merges = []
    while len(merges) < steps and len(clusters) > target:
        best = None
        for i in sorted(clusters):
            aff = sorted(((ref_affinity(w, clusters[i], clusters[j]), j) for j in clusters if j != i),
                         key=lambda e: (-e[0], e[1]))
            if aff[0][0] <= 0:
                continue
            values = [v for v, _ in aff[:kc]] + [0.0] * (kc - len(aff[:kc]))
            spread = sum(values[0] - v for v in values[1:]) / (kc - 1) if kc > 1 else 0.0
            score = values[0] + lam * spread
            if best is None or score > best[0]:
                best = (score, i, aff[0][1])
        if best is None:
            def mean(c: list[int]) -> list[float]:
                return [sum(points[x][d] for x in c) / len(c) for d in range(len(points[0]))]

            ids = sorted(clusters)
            pair = min(((i, j) for i in ids for j in ids if i < j),
                       key=lambda p: (sum((u - v) ** 2 for u, v in zip(mean(clusters[p[0]]), mean(clusters[p[1]]))), p))
        else:
            pair = (min(best[1], best[2]), max(best[1], best[2]))
        clusters[pair[0]] += clusters.pop(pair[1])
        merges.append(pair)
    return merges


# ---------------------------------------------------------------------------------------------- the clustering
def test_knn_graph_and_initial_clusters_match_the_reference():
    x = blobs()
    graph = knn_graph(x, 5)
    near, w = ref_graph(x.tolist(), 5)
    assert graph.neighbours.tolist() == near
    dense = torch.zeros(30, 30, dtype=torch.float64).scatter_(1, graph.neighbours, graph.weights)
    torch.testing.assert_close(dense, torch.tensor(w, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    labels = initial_clusters(graph)
    assert labels.tolist() == ref_initial(near)
    assert 30 / 5 <= labels.max() + 1 <= 30 / 2  # pairs and a few larger trees


def test_cluster_affinity_matches_the_loop_reference():
    x = blobs(25, seed=1)
    graph = knn_graph(x, 4)
    _, w = ref_graph(x.tolist(), 4)
    labels = torch.randint(0, 9, (25,), generator=torch.Generator().manual_seed(2))
    labels = torch.unique(labels, return_inverse=True)[1]  # some singletons, some larger clusters
    m = int(labels.max()) + 1
    members = [torch.nonzero(labels == c).flatten().tolist() for c in range(m)]
    sizes = torch.bincount(labels)
    affinity = cluster_affinity(directed_affinity(graph, labels), sizes).to_dense()
    expected = torch.tensor([[ref_affinity(w, members[i], members[j]) if i != j else 0.0 for j in range(m)]
                             for i in range(m)], dtype=torch.float64)
    assert (expected > 0).sum() > m  # the test has something to compare
    torch.testing.assert_close(affinity, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("kc", "lam"), [(5, 1.0), (3, 0.5), (1, 0.0), (4, 3.0)])
def test_merge_sequence_equals_the_plain_python_criterion(kc, lam):
    x = blobs(60, seed=0, spread=0.8)
    graph = knn_graph(x, 6)
    near, w = ref_graph(x.tolist(), 6)
    start = initial_clusters(graph)
    expected = ref_merges(x.tolist(), w, start.tolist(), 100, 3, kc, lam)
    labels, merges = agglomerate(x, start, 100, target=3, kc=kc, lam=lam, graph=graph)
    assert merges == expected and len(merges) == int(start.max()) + 1 - 3
    assert labels.max() + 1 == 3


def test_the_criterion_weighs_the_other_neighbours():
    x = blobs(60, seed=0, spread=0.8)  # the sequence the reference checks above
    start = initial_clusters(knn_graph(x, 6))
    assert agglomerate(x, start, 100, 3, k=6, kc=5, lam=0.0)[1] != agglomerate(x, start, 100, 3, k=6, kc=5,
                                                                                lam=2.0)[1]


def test_incremental_affinities_equal_a_recomputation_after_every_merge():
    x = blobs(40, seed=4, spread=0.9)
    graph = knn_graph(x, 5)
    state = _Agglomeration(graph, initial_clusters(graph), kc=5, lam=1.0)
    for _ in range(8):
        state.merge(*state.best())
        alive = sorted(i for i, m in enumerate(state.members) if m is not None)
        labels = torch.unique(state.labels, return_inverse=True)[1]
        expected = cluster_affinity(directed_affinity(graph, labels), torch.bincount(labels)).to_dense()
        got = torch.tensor([[state.near[i].get(j, 0.0) for j in alive] for i in alive], dtype=torch.float64)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)


def test_disconnected_groups_fall_back_to_the_nearest_means_and_reach_the_target():
    far = torch.cat([blobs(12, seed=5), blobs(12, seed=6) + 100.0])
    graph = knn_graph(far, 3)
    near, w = ref_graph(far.tolist(), 3)
    start = initial_clusters(graph)
    labels, merges = agglomerate(far, start, 100, target=1, kc=3, graph=graph)
    assert merges == ref_merges(far.tolist(), w, start.tolist(), 100, 1, 3, 1.0)
    assert labels.unique().tolist() == [0]


def test_periods_unroll_a_fraction_of_the_clusters_and_stop_at_the_target():
    assert unrolled_steps(450, 100, 0.9) == 350 and unrolled_steps(450, 10, 0.9) == 405
    assert unrolled_steps(451, 10, 0.2) == 91 and unrolled_steps(10, 10, 0.9) == 0
    x = blobs(60, seed=7)
    start = initial_clusters(knn_graph(x, 5))
    count = int(start.max()) + 1
    labels, merges = agglomerate(x, start, unrolled_steps(count, 4, 0.5), target=4, k=5)
    assert labels.max() + 1 == count - math.ceil(0.5 * count) and len(merges) == math.ceil(0.5 * count)
    labels, _ = agglomerate(x, labels, 1000, target=4, k=5)
    assert labels.max() + 1 == 4 and torch.bincount(labels).min() > 0


def test_clustering_is_deterministic():
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(8))
    runs = [agglomerate(x, initial_clusters(knn_graph(x, 10)), 1000, target=7, k=10) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    merged = agglomerate(x, runs[0][0], 0, target=7)[0]  # no merge: the ids stay, ordered by smallest sample
    assert torch.equal(merged, runs[0][0])
    firsts = [int(torch.nonzero(merged == c)[0]) for c in range(7)]
    assert firsts == sorted(firsts)


# ------------------------------------------------------------------------------------------------------- the loss
def test_negatives_are_distinct_samples_of_other_clusters_drawn_uniformly():
    clusters = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(7, 7)
    for _ in range(3000):
        picked, valid = cluster_negatives(clusters, 2, g)
        assert valid.all() and (clusters[picked] != clusters[:, None]).all()
        assert (picked[:, 0] != picked[:, 1]).all()
        counts += torch.zeros(7, 7).scatter_add_(1, picked, torch.ones(7, 2))
    others = (clusters[:, None] != clusters[None]).float()
    expected = others * 2 / others.sum(1, keepdim=True)  # 2 of the anchor's candidates, each equally likely
    torch.testing.assert_close(counts / 3000, expected, atol=0.03, rtol=0)
    picked, valid = cluster_negatives(clusters, 0, g)  # every one
    assert (valid.sum(1) == others.sum(1)).all()
    assert (clusters[picked] != clusters[:, None])[valid].all()
    assert cluster_negatives(clusters, 6, g)[1].sum(1).tolist() == [5, 5, 5, 5, 4, 4, 4]  # fewer than asked


def ref_triplet_loss(z, clusters, gamma, margin, picked, valid):
    """Mean over (anchor i, positive j != i of its cluster, each drawn negative n) of
    max(0, gamma |z_i - z_j|^2 - |z_i - z_n|^2 + margin) on unit vectors, in float64 loops."""
    z = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in z.double().tolist()]
    c = clusters.tolist()

    def d2(i, j):
        return sum((u - v) ** 2 for u, v in zip(z[i], z[j]))

    terms = [max(0.0, gamma * d2(i, j) - d2(i, n) + margin)
             for i in range(len(z)) for j in range(len(z)) if i != j and c[i] == c[j]
             for n, ok in zip(picked[i].tolist(), valid[i].tolist()) if ok]
    return sum(terms) / len(terms)


@pytest.mark.parametrize(("negatives", "gamma", "margin"), [(3, 2.0, 0.2), (0, 1.0, 0.5), (20, 1.5, 1.0)])
def test_weighted_triplet_loss_matches_the_loop_reference(negatives, gamma, margin):
    z = torch.randn(12, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
    clusters = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 1, 4, 0, 2])
    loss = weighted_triplet_loss(z, clusters, gamma, margin, negatives, torch.Generator().manual_seed(9))
    picked, valid = cluster_negatives(clusters, negatives, torch.Generator().manual_seed(9))
    expected = ref_triplet_loss(z.detach(), clusters, gamma, margin, picked, valid)
    assert abs(float(loss.detach()) - expected) < 1e-5 and expected > 0
    loss.backward()
    assert z.grad.abs().sum() > 0


def test_a_batch_without_a_pair_gives_zero_with_a_graph():
    z = torch.randn(4, 3, requires_grad=True)
    loss = weighted_triplet_loss(z, torch.arange(4), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert float(loss.detach()) == 0 and torch.equal(z.grad, torch.zeros(4, 3))


# ----------------------------------------------------------------------------------------------------- the method
def cfg(**kw):
    base = dict(method="jule", data="digits", batch_size=64, image_size=8, steps=30, log_every=5, lr=0.01,
                method_args=dict(clusters=30, eta=0.5, proj_dim=32))
    return TrainConfig(**{**base, **kw})


def make(**kw) -> JULE:
    torch.manual_seed(0)
    return JULE(build_backbone("small"), 256, 8, num_samples=len(DIGITS.pretrain.images), **{"proj_dim": 32, **kw})


def embeddings(method: JULE) -> torch.Tensor:
    method.eval()
    with torch.no_grad():
        feats = method.embed(eval_view(DIGITS.pretrain.images, 8))
    method.train()
    return feats


def test_first_period_makes_the_initial_clusters_and_the_next_merge_a_share_of_them():
    images = DIGITS.pretrain.images
    method = make(clusters=20, eta=0.5, period=2)
    method.on_epoch_start(Epoch(0, images, method, {}, torch.device("cpu"), seed=0))
    graph = knn_graph(embeddings(method), 20)
    start = initial_clusters(graph)
    assert torch.equal(method.clusters, start) and int(method.periods) == 1
    count = int(start.max()) + 1
    assert len(images) / 5 < count < len(images) / 2
    method.on_epoch_start(Epoch(1, images, method, {}, torch.device("cpu"), seed=0))  # not a period's first epoch
    assert torch.equal(method.clusters, start) and int(method.periods) == 1
    method.on_epoch_start(Epoch(2, images, method, {}, torch.device("cpu"), seed=0))
    expected, _ = agglomerate(embeddings(method), start, math.ceil(0.5 * count), target=20)
    assert torch.equal(method.clusters, expected) and int(method.periods) == 2
    assert int(expected.max()) + 1 == count - math.ceil(0.5 * count)


def test_views_show_the_training_input_with_its_cluster():
    torch.manual_seed(0)
    method = JULE(Recorder(8), 8, 8, num_samples=64, clusters=4, proj_dim=4)
    method.clusters.copy_(torch.arange(64) % 5)
    images = DIGITS.pretrain.images[:16]
    batch = Batch(images, None, torch.arange(16) * 3, torch.Generator().manual_seed(1), 0.0)
    method.training_step(batch)
    batch.generator.manual_seed(1)
    (panel,) = method.views(batch)
    torch.testing.assert_close(prepare(panel.images), method.backbone.seen)
    assert panel.captions == [f"cluster {(3 * i) % 5}" for i in range(16)]


def test_bad_options_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="2000 clusters is more than the 1347 images"):
        selfsup.train(cfg(method_args=dict(clusters=2000)), tmp_path / "run", show_progress=False, data=DIGITS)
    with pytest.raises(UserError, match="eta in"):
        make(eta=0.0)
    assert make(num_classes=10).target == 100


def test_resume_mid_period_and_at_a_period_boundary_equals_a_straight_run(tmp_path):
    # 21 steps per epoch, a period of 1 epoch: initial clusters at step 0, merges at 21 and 42 (half of them each)
    straight = selfsup.train(cfg(steps=50), tmp_path / "a", evaluate=False, show_progress=False, data=DIGITS)
    selfsup.train(cfg(steps=50), tmp_path / "b", evaluate=False, show_progress=False, data=DIGITS, stop_at=30)
    selfsup.train(cfg(steps=50), resume=tmp_path / "b", evaluate=False, show_progress=False, data=DIGITS,
                  stop_at=42)
    resumed = selfsup.train(cfg(steps=50), resume=tmp_path / "b", evaluate=False, show_progress=False, data=DIGITS)
    assert_same_state(straight.method.state_dict(), resumed.method.state_dict())
    assert int(straight.method.periods) == 3


def test_two_processes_cluster_and_train_like_one(tmp_path):
    # 10 steps per epoch: the initial clusters, then merges at step 10 (later, rounding differences between the two
    # runs grow past the tolerance: 2e-5 in the weights after 21 steps at batch 64, 4e-7 after 14)
    state = assert_two_ranks_train_like_one(tmp_path, cfg(steps=12, batch_size=128))
    assert int(state["periods"]) == 2 and len(state["clusters"].unique()) < len(DIGITS.pretrain.images) / 3
