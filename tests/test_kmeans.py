"""DeepCluster's clustering machinery (selfsup.dynamics.kmeans) against slow references and known structure."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from selfsup.dynamics import kmeans as km
from selfsup.dynamics.kmeans import (
    SPLIT_EPS,
    cluster_balanced_weights,
    kmeans,
    pca_whitening,
    preprocess_features,
    split_empty_clusters,
)
from selfsup.errors import UserError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_lloyd(x: torch.Tensor, init: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm with plain loops in float64; fails if a cluster ever empties."""
    points, cents = x.double().tolist(), init.double().tolist()

    def nearest(p: list[float]) -> int:
        return min(range(len(cents)), key=lambda j: sum((a - b) ** 2 for a, b in zip(p, cents[j])))

    for _ in range(iters):
        labels = [nearest(p) for p in points]
        new = []
        for j in range(len(cents)):
            members = [p for p, lab in zip(points, labels) if lab == j]
            assert members, "the reference data must not empty a cluster"
            new.append([sum(col) / len(members) for col in zip(*members)])
        cents = new
    return torch.tensor(cents, dtype=torch.float64), torch.tensor([nearest(p) for p in points])


@pytest.mark.parametrize("chunk_elements", [km._CHUNK_ELEMENTS, 64])  # one chunk; many chunks
def test_kmeans_matches_loop_reference(monkeypatch, chunk_elements):
    monkeypatch.setattr(km, "_CHUNK_ELEMENTS", chunk_elements)
    x = torch.randn(300, 5, generator=_gen(0))
    init = x[torch.randperm(300, generator=_gen(1))[:6]]
    centroids, assignments = kmeans(x, 6, iters=10, init=init, use_faiss=False)
    ref_centroids, ref_assignments = _reference_lloyd(x, init, 10)
    assert assignments.dtype == torch.int64 and centroids.shape == (6, 5)
    assert torch.equal(assignments, ref_assignments)
    torch.testing.assert_close(centroids.double(), ref_centroids, rtol=0, atol=1e-5)


def test_kmeans_recovers_separated_blobs():
    g = _gen(2)
    centres = torch.randn(3, 8, generator=g) * 10
    truth = torch.arange(3).repeat_interleave(100)
    x = centres[truth] + torch.randn(300, 8, generator=g)
    runs = [kmeans(x, 3, generator=_gen(seed), use_faiss=False) for seed in range(20)]  # keep the best, as nredo
    best_c, best_a = min(runs, key=lambda r: (x - r[0][r[1]]).pow(2).sum().item())
    assert adjusted_rand_score(truth.numpy(), best_a.numpy()) > 0.99
    torch.testing.assert_close(best_c[best_a], centres[truth], rtol=0, atol=0.5)


def _two_groups_and_a_far_centroid() -> tuple[torch.Tensor, torch.Tensor]:
    """31 points near (5, 5), 11 near (-5, 8) (float64), and initial centroids whose third attracts nothing."""
    g = _gen(3)
    a = torch.tensor([5.0, 5.0]) + torch.randn(31, 2, generator=g, dtype=torch.float64)
    b = torch.tensor([-5.0, 8.0]) + torch.randn(11, 2, generator=g, dtype=torch.float64)
    x = torch.cat([a, b])
    return x, torch.stack([a[0], b[0], torch.tensor([100.0, 100.0], dtype=torch.float64)])


def test_empty_cluster_is_split_as_faiss_does():
    x, init = _two_groups_and_a_far_centroid()
    means = torch.stack([x[:31].mean(0), x[31:].mean(0)])
    sign = torch.tensor([SPLIT_EPS, -SPLIT_EPS], dtype=torch.float64)
    donors = []
    for seed in range(400):
        centroids, _ = kmeans(x, 3, iters=1, init=init, generator=_gen(seed), use_faiss=False)
        donor = int((centroids[2] - means).norm(dim=1).argmin())
        donors.append(donor)
        torch.testing.assert_close(centroids[2], means[donor] * (1 + sign), rtol=1e-12, atol=0)
        torch.testing.assert_close(centroids[donor], means[donor] * (1 - sign), rtol=1e-12, atol=0)
        torch.testing.assert_close(centroids[1 - donor], means[1 - donor], rtol=1e-12, atol=0)
    # donor drawn with probability proportional to size - 1: 30 / 40 for the group of 31
    assert abs(donors.count(0) / 400 - 0.75) < 0.08
    _, assignments = kmeans(x, 3, iters=10, init=init, generator=_gen(0), use_faiss=False)
    assert (torch.bincount(assignments, minlength=3) > 0).all()


def test_split_empty_clusters_donor_law_and_sizes():
    hits = torch.zeros(4)
    for seed in range(2000):
        counts = torch.tensor([0.0, 3.0, 1.0, 5.0], dtype=torch.float64)
        centroids = torch.arange(12, dtype=torch.float64).view(4, 3) + 1
        assert split_empty_clusters(centroids, counts, _gen(seed)) == 1
        donor = int((centroids[0] - centroids).abs().sum(1)[1:].argmin()) + 1
        hits[donor] += 1
        assert counts[0] == counts[donor] and counts.sum() == 9 and (counts > 0).all()
    # weights size - 1 = (2, 0, 4): a singleton never donates
    assert hits[2] == 0
    assert abs(hits[1] / 2000 - 1 / 3) < 0.04 and abs(hits[3] / 2000 - 2 / 3) < 0.04
    counts = torch.tensor([0.0, 2.0, 0.0, 2.0], dtype=torch.float64)  # two empties, two clusters of 2
    assert split_empty_clusters(torch.randn(4, 3, dtype=torch.float64), counts, _gen(0)) == 2
    assert torch.equal(counts, torch.ones(4, dtype=torch.float64))


def test_kmeans_seeded_and_initialised_from_distinct_rows():
    x = torch.randn(200, 4, generator=_gen(4))
    first = kmeans(x, 5, generator=_gen(7), use_faiss=False)
    second = kmeans(x, 5, generator=_gen(7), use_faiss=False)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    picks = []
    for seed in range(5):
        init, _ = kmeans(x, 5, iters=0, generator=_gen(seed), use_faiss=False)
        rows = ((init[:, None] - x[None]).abs().sum(2) == 0).nonzero()[:, 1]  # which rows of x were drawn
        assert rows.numel() == 5 and rows.unique().numel() == 5
        picks.append(tuple(sorted(rows.tolist())))
    assert len(set(picks)) > 1


def test_kmeans_bad_k():
    x = torch.randn(4, 3)
    for k in (0, 5):
        with pytest.raises(UserError, match="number of clusters"):
            kmeans(x, k, use_faiss=False)
    assert torch.equal(torch.sort(kmeans(x, 4, generator=_gen(0), use_faiss=False)[1])[0], torch.arange(4))


@pytest.mark.skipif(importlib.util.find_spec("faiss") is not None, reason="faiss is installed")
def test_kmeans_faiss_required_but_missing():
    with pytest.raises(UserError, match="faiss is not installed"):
        kmeans(torch.randn(8, 2), 2, use_faiss=True)


def _correlated(n: int, d: int, seed: int) -> torch.Tensor:
    g = _gen(seed)
    return (torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + 100).float()


@pytest.mark.parametrize("n,d,dim,expected", [(400, 8, 256, 8), (5, 8, 256, 4), (400, 32, 10, 10)])
def test_pca_whitening_identity_covariance_and_dims(monkeypatch, n, d, dim, expected):
    monkeypatch.setattr(km, "_CHUNK_ELEMENTS", 100)  # many chunks
    x = _correlated(n, d, 5)
    mean, matrix = pca_whitening(x, dim=dim, eps=0.0)
    y = (x.double() - mean) @ matrix
    assert y.shape == (n, expected)
    torch.testing.assert_close(y.T @ y / n, torch.eye(expected, dtype=torch.float64), rtol=0, atol=1e-8)
    out = preprocess_features(x, dim=dim)
    assert out.shape == (n, expected) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(n), rtol=0, atol=1e-6)


def test_preprocess_features_matches_sklearn_whitened_pca():
    x = _correlated(300, 16, 6)
    out = preprocess_features(x, dim=6)
    ref = torch.from_numpy(PCA(n_components=6, whiten=True).fit_transform(x.double().numpy()))
    ref = torch.nn.functional.normalize(ref, dim=1).float()  # sklearn divides by N - 1: a scale the L2 step removes
    out = out * torch.sign((out * ref).sum(0))  # principal directions are defined up to sign
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)


def test_cluster_balanced_weights():
    sizes = torch.tensor([50, 5, 0, 145])
    assignments = torch.repeat_interleave(torch.arange(4), sizes)[torch.randperm(200, generator=_gen(8))]
    w = cluster_balanced_weights(assignments, 4)
    assert w.shape == (200,) and w.dtype == torch.float32
    totals = [w[assignments == c].sum().item() for c in range(4)]
    assert totals[2] == 0
    assert all(abs(t - 1 / 3) < 1e-6 for i, t in enumerate(totals) if i != 2)
    assert abs(w.sum().item() - 1) < 1e-6
    draws = torch.multinomial(w, 100_000, replacement=True, generator=_gen(9))
    freq = torch.bincount(assignments[draws], minlength=4) / 100_000
    assert freq[2] == 0 and ((freq[[0, 1, 3]] - 1 / 3).abs() < 0.01).all()
    with pytest.raises(ValueError):
        cluster_balanced_weights(assignments, 3)
