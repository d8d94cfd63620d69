"""The contrastive/siamese losses against slow float64 references written from each paper's formula."""

import math

import numpy as np
import pytest
import torch

from selfsup.losses import (
    barlow_twins_loss,
    cross_correlation,
    info_nce,
    instance_softmax,
    nce_loss,
    nce_normaliser,
    nt_xent,
    supcon_loss,
    triplet_loss,
)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


# ------------------------------------------------------------------------------------------- MoCo InfoNCE


def info_nce_reference(q, k, queue, t):
    """MoCo eq. (1): L_q = -log exp(q.k+ / t) / (exp(q.k+ / t) + sum_i exp(q.k_i / t)), normalised vectors."""
    total = 0.0
    for qi, ki in zip(q, k):
        pos = math.exp(cos(qi, ki) / t)
        neg = sum(math.exp(cos(qi, n) / t) for n in queue)
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


@pytest.mark.parametrize("batch,queue_size", [(1, 1), (3, 7), (8, 32)])
@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
def test_info_nce_matches_moco(batch, queue_size, temperature):
    q, k, queue = randn(batch, 6, seed=1), randn(batch, 6, seed=2), randn(queue_size, 6, seed=3)
    got = info_nce(q, k, queue, temperature).item()
    assert got == pytest.approx(info_nce_reference(q, k, queue, temperature), rel=1e-5)


def test_info_nce_only_trains_the_query():
    q, k, queue = (torch.randn(4, 5, requires_grad=True) for _ in range(3))
    info_nce(q, k, queue, 0.2).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0 and k.grad is None and queue.grad is None


# --------------------------------------------------------------------------------------- NPID softmax


def npid_reference(v, memory, targets, t):
    """NPID eq. (2): P(i|v) = exp(v_i . v / t) / sum_j exp(v_j . v / t), v normalised; mean -log P."""
    total = 0.0
    for f, i in zip(v, targets):
        f = f / f.norm()
        scores = [math.exp(float(f @ m) / t) for m in memory]
        total += -math.log(scores[int(i)] / sum(scores))
    return total / v.shape[0]


@pytest.mark.parametrize("batch,bank", [(1, 2), (4, 9), (16, 40)])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_instance_softmax_matches_npid(batch, bank, temperature):
    v = randn(batch, 5, seed=batch)
    memory = torch.nn.functional.normalize(randn(bank, 5, seed=bank), dim=1)
    targets = torch.randperm(bank, generator=torch.Generator().manual_seed(0))[:batch]
    got = instance_softmax(v, memory, targets, temperature).item()
    assert got == pytest.approx(npid_reference(v, memory, targets, temperature), rel=1e-5)


def nce_reference(v, positives, noise, n, z, t):
    """NPID eqs. (3)-(6) in float64 with autograd: P(i|v) = exp(m_i . v / t) / Z, h = P / (P + m / n);
    per sample -log h(own row) - sum_k log(1 - h(noise row k)), averaged."""
    v = v.double()
    m = noise.shape[0]
    total = 0.0
    for b in range(v.shape[0]):
        f = v[b] / v[b].norm()
        p_pos = torch.exp(positives[b].double() @ f / t) / z
        total = total - torch.log(p_pos / (p_pos + m / n))
        for row in noise.double():
            p = torch.exp(row @ f / t) / z
            total = total - torch.log(1 - p / (p + m / n))
    return total / v.shape[0]


@pytest.mark.parametrize("batch,m", [(1, 1), (4, 7), (8, 32)])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_nce_loss_matches_npid_values_and_gradients(batch, m, temperature):
    n = 1000
    z = nce_normaliser(n, 5, temperature, draws=4096)
    v = randn(batch, 5, seed=batch).requires_grad_()
    bank = torch.nn.functional.normalize(randn(m + batch, 5, seed=m), dim=1)
    got = nce_loss(v, bank[:batch], bank[batch:], n, z, temperature)
    got.backward()
    v64 = v.detach().double().requires_grad_()
    want = nce_reference(v64, bank[:batch], bank[batch:], n, z, temperature)
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(v.grad.double(), v64.grad, rtol=1e-4, atol=1e-7)


def test_nce_normaliser_is_n_times_the_mean_similarity_exponential_on_the_sphere():
    """E[exp(x / t)] for x the first coordinate of a uniform unit vector in d dimensions, by quadrature of
    its density (1 - x^2)^((d - 3) / 2) on [-1, 1]."""
    d, t, n = 16, 0.5, 100
    x = np.linspace(-1, 1, 200001)
    density = (1 - x**2) ** ((d - 3) / 2)
    expected = n * np.trapezoid(np.exp(x / t) * density, x) / np.trapezoid(density, x)
    assert nce_normaliser(n, d, t) == pytest.approx(expected, rel=1e-2)
    assert nce_normaliser(n, d, t) == nce_normaliser(n, d, t)  # fixed: the same on every rank and resume


# ----------------------------------------------------------------------------------------- Barlow Twins


def cross_correlation_reference(z1, z2, eps=1e-5):
    """Barlow eq. (2) in numpy: standardise each dimension over the batch (biased variance), C = A^T B / N."""
    a, b = z1.numpy(), z2.numpy()
    a = (a - a.mean(0)) / np.sqrt(a.var(0) + eps)
    b = (b - b.mean(0)) / np.sqrt(b.var(0) + eps)
    return a.T @ b / a.shape[0]


def barlow_reference(z1, z2, lambd):
    """Barlow eq. (1) with loops: sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2."""
    c = cross_correlation_reference(z1, z2)
    d = c.shape[0]
    on = sum((1 - c[i, i]) ** 2 for i in range(d))
    off = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    return on + lambd * off


@pytest.mark.parametrize("batch,dim", [(2, 3), (7, 5), (32, 16)])
def test_cross_correlation_matches_numpy(batch, dim):
    z1, z2 = randn(batch, dim, seed=batch), randn(batch, dim, seed=batch + 1)
    np.testing.assert_allclose(cross_correlation(z1, z2).double().numpy(), cross_correlation_reference(z1, z2),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch,dim", [(3, 4), (16, 8)])
@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_barlow_twins_loss_matches_paper(batch, dim, lambd):
    z1, z2 = randn(batch, dim, seed=dim), randn(batch, dim, seed=dim + 1)
    assert barlow_twins_loss(z1, z2, lambd).item() == pytest.approx(barlow_reference(z1, z2, lambd), rel=1e-5)


def test_barlow_twins_is_zero_for_identical_decorrelated_views():
    x = randn(64, 8, seed=0)
    z = torch.linalg.qr(x - x.mean(0))[0]  # centred, orthogonal columns: C = identity
    assert barlow_twins_loss(z, z, 0.0051).item() < 1e-3
    assert barlow_twins_loss(z, randn(64, 8, seed=1), 0.0051).item() > 1


# ------------------------------------------------------------------------------------------------ SupCon


def supcon_reference(views, labels, t):
    """SupCon eq. (2), L_out: for each anchor i with P(i) non-empty,
    -1/|P(i)| sum_p log exp(s_ip / t) / sum_{a != i} exp(s_ia / t); mean over those anchors."""
    z = torch.cat(views)
    lab = labels.repeat(len(views)).tolist()
    losses = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and lab[p] == lab[i]]
        if not positives:
            continue
        denom = sum(math.exp(cos(z[i], z[a]) / t) for a in range(len(z)) if a != i)
        losses.append(-sum(math.log(math.exp(cos(z[i], z[p]) / t) / denom) for p in positives) / len(positives))
    return sum(losses) / len(losses) if losses else 0.0


@pytest.mark.parametrize("batch,classes", [(2, 1), (6, 3), (16, 4), (9, 9)])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_matches_paper(batch, classes, temperature):
    z1, z2 = randn(batch, 6, seed=batch), randn(batch, 6, seed=batch + 100)
    labels = torch.arange(batch) % classes
    got = supcon_loss(z1, z2, labels, temperature).item()
    assert got == pytest.approx(supcon_reference([z1, z2], labels, temperature), rel=1e-5)


@pytest.mark.parametrize("batch", [1, 5, 12])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_with_unique_labels_is_nt_xent(batch, temperature):
    z1, z2 = randn(batch, 8, seed=batch), randn(batch, 8, seed=batch + 1)
    got = supcon_loss(z1, z2, torch.arange(batch) * 3 + 1, temperature).item()
    assert got == pytest.approx(nt_xent(z1, z2, temperature).item(), rel=1e-6)


def test_supcon_anchor_without_positive_is_skipped_not_nan():
    z = randn(5, 4, seed=0).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2])  # sample 4 has no positive (single view)
    loss = supcon_loss(z, None, labels, 0.1)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(supcon_reference([z.detach()], labels, 0.1), rel=1e-6)
    loss.backward()
    assert torch.isfinite(z.grad).all()
    lonely = supcon_loss(z, None, torch.arange(5), 0.1)  # no anchor has a positive
    assert lonely.item() == 0.0 and torch.isfinite(torch.autograd.grad(lonely, z)[0]).all()


# ----------------------------------------------------------------------------------------------- Triplet


def triplet_reference(a, p, margin, negative_of):
    """Wang & Gupta eq. (2): max(0, D(a, p) - D(a, n) + M) with D = 1 - cos; mean over anchors."""
    return sum(max(0.0, (1 - cos(a[i], p[i])) - (1 - cos(a[i], p[negative_of(i)])) + margin)
               for i in range(len(a))) / len(a)


@pytest.mark.parametrize("batch", [2, 5, 16])
@pytest.mark.parametrize("margin", [0.5, 1.5])
def test_triplet_hard_negative_matches_paper(batch, margin):
    a, p = randn(batch, 6, seed=batch), randn(batch, 6, seed=batch + 7)

    def hardest(i):
        return max((j for j in range(batch) if j != i), key=lambda j: cos(a[i], p[j]))

    assert triplet_loss(a, p, margin).item() == pytest.approx(triplet_reference(a, p, margin, hardest), rel=1e-6)


@pytest.mark.parametrize("batch", [2, 9])
def test_triplet_random_negative_matches_paper(batch):
    a, p = randn(batch, 6, seed=batch), randn(batch, 6, seed=batch + 7)
    shifts = torch.randint(1, batch, (batch,), generator=torch.Generator().manual_seed(3)).tolist()
    expected = triplet_reference(a, p, 0.5, lambda i: (i + shifts[i]) % batch)
    got = triplet_loss(a, p, 0.5, mining="random", generator=torch.Generator().manual_seed(3)).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert all(s % batch for s in shifts)  # never the anchor's own positive


@pytest.mark.parametrize("batch,candidates,top_k", [(6, 0, 3), (16, 5, 1), (16, 5, 4), (9, 100, 2)])
def test_triplet_top_k_hardest_among_random_candidates_matches_paper(batch, candidates, top_k):
    """Wang & Gupta's hard negative mining: per anchor, the top K of a random set of candidates; each of the
    K negatives is its own triplet."""
    a, p = randn(batch, 6, seed=batch), randn(batch, 6, seed=batch + 11)
    keys = torch.rand(batch, batch, generator=torch.Generator().manual_seed(5))
    total = 0.0
    for i in range(batch):
        others = [j for j in range(batch) if j != i]
        if 0 < candidates < batch - 1:  # the candidates: the smallest random keys among the others
            others = sorted(others, key=lambda j: float(keys[i, j]))[:candidates]
        hardest = sorted(others, key=lambda j: -cos(a[i], p[j]))[:top_k]
        total += sum(triplet_reference(a[i : i + 1], p[[i, j]], 0.5, lambda _: 1) for j in hardest)
    got = triplet_loss(a, p, 0.5, "hard", torch.Generator().manual_seed(5), candidates, top_k).item()
    assert got == pytest.approx(total / (batch * top_k), rel=1e-6)


def test_triplet_rejects_unknown_mining_and_single_samples():
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(torch.randn(3, 2), torch.randn(3, 2), mining="semi")
    with pytest.raises(ValueError, match="two samples"):
        triplet_loss(torch.randn(1, 2), torch.randn(1, 2))
    with pytest.raises(ValueError, match="top_k"):
        triplet_loss(torch.randn(4, 2), torch.randn(4, 2), top_k=4)  # only 3 others
    with pytest.raises(ValueError, match="apply to hard mining"):
        triplet_loss(torch.randn(4, 2), torch.randn(4, 2), mining="random", top_k=2)
