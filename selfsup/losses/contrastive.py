"""Contrastive and siamese losses: pure functions of tensors with no hidden state.

Losses that mix samples across the batch gather the other ranks' embeddings with gradient when
torch.distributed is initialised (:func:`selfsup.distributed.gather_with_grad`); in a
single process the gather is the identity and costs nothing.

Every loss runs in float32 even inside the trainer's bf16 autocast region
(:func:`selfsup.losses.base.full_precision`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup.distributed import all_reduce_with_grad, gather, gather_with_grad, rank, world_size
from selfsup.losses.base import full_precision


def _global_index(n: int, device: torch.device) -> torch.Tensor:
    """Positions of this rank's ``n`` samples in a batch gathered from all ranks."""
    return torch.arange(n, device=device) + rank() * n


@full_precision
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., ICML 2020).

    ``z1[i]`` and ``z2[i]`` are two views of sample ``i``. Every one of the 2N views is an anchor
    whose positive is its pair and whose negatives are the other 2N - 2 views (of all ranks).
    Returns the mean over the 2N anchors.
    """
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    local = torch.cat([z1, z2])
    everyone = torch.cat([gather_with_grad(z1), gather_with_grad(z2)])
    n, total = z1.shape[0], everyone.shape[0] // 2
    logits = local @ everyone.T / temperature
    idx = _global_index(n, z1.device)
    anchors = torch.cat([idx, idx + total])  # each local anchor's own column
    positives = torch.cat([idx + total, idx])
    logits.scatter_(1, anchors[:, None], float("-inf"))  # a scalar fill: no host-to-device copy
    return F.cross_entropy(logits, positives)


@full_precision
def byol_regression(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's loss 2 - 2 cos(p, z) with no gradient into the target ``z`` (Grill et al., NeurIPS 2020)."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)).mean()


@full_precision
def info_nce(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE (He et al., CVPR 2020, eq. 1): -log exp(q.k+ / T) / (exp(q.k+ / T) + sum_n exp(q.n / T)).

    ``q[i]`` is a query, ``k[i]`` its positive key and ``negatives`` (K, D) the queue; all are L2-normalised
    here. No gradient flows into the keys or the queue. Returns the mean over the queries.
    """
    q = F.normalize(q.float(), dim=1)
    k, negatives = F.normalize(k.detach().float(), dim=1), F.normalize(negatives.detach().float(), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ negatives.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


@full_precision
def instance_softmax(features: torch.Tensor, memory: torch.Tensor, targets: torch.Tensor,
                     temperature: float = 0.07) -> torch.Tensor:
    """NPID's non-parametric softmax (Wu et al., CVPR 2018, eq. 2) over a whole memory bank.

    P(i | v) = exp(m_i . v / T) / sum_j exp(m_j . v / T), where ``memory`` (M, D) is the bank and
    ``targets[b]`` the row of sample ``b``'s own entry. ``features`` are L2-normalised here; no gradient
    flows into the memory. Returns the mean of -log P(i | v). (With sampled negatives instead of the whole
    bank, NPID's loss is :func:`info_nce` with the sample's own row as the positive.)
    """
    v = F.normalize(features.float(), dim=1)
    return F.cross_entropy(v @ memory.detach().float().T / temperature, targets)


def nce_normaliser(num_samples: int, dim: int, temperature: float, draws: int = 65536) -> float:
    """NPID's constant Z (Wu et al., CVPR 2018, eq. 5): Z = n E_j[exp(v_j . f / T)], estimated by Monte Carlo
    against the paper's starting memory of uniformly random unit vectors (by symmetry any unit f will do);
    a fixed seed makes it the same number on every rank and every resume."""
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(draws, dim, generator=g, dtype=torch.float64), dim=1)
    return float(num_samples * torch.exp(v[:, 0] / temperature).mean())


@full_precision
def nce_loss(features: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, num_samples: int,
             normaliser: float, temperature: float = 0.07) -> torch.Tensor:
    """NPID's noise-contrastive estimation (Wu et al., CVPR 2018, eqs. 3-6) with uniform noise P_n = 1/n.

    P(i | f) = exp(v_i . f / T) / Z and h(i, f) = P(i | f) / (P(i | f) + m P_n); each sample's loss is
    -log h(i, f) for its own memory row ``positives[b]`` and -sum_k log(1 - h(j_k, f)) over the m rows of
    ``negatives`` (shared by the batch). ``features`` are L2-normalised here; no gradient flows into the
    memory. Computed through softplus: -log h = softplus(log(m P_n) - log P). Returns the mean over samples.
    """
    f = F.normalize(features.float(), dim=1)
    shift = math.log(negatives.shape[0] / num_samples) + math.log(normaliser)  # log(m P_n) + log Z
    pos = (f * positives.detach().float()).sum(1) / temperature  # log P(i | f) + log Z
    neg = f @ negatives.detach().float().T / temperature
    return (F.softplus(shift - pos) + F.softplus(neg - shift).sum(1)).mean()


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins' cross-correlation matrix (Zbontar et al., ICML 2021, eq. 2), (D, D).

    Each embedding dimension is batch-normalised over the global batch (mean and biased variance summed
    across ranks, as SyncBatchNorm would), then C = z1n^T z2n / N summed across ranks.
    """
    z1, z2 = z1.float(), z2.float()
    n = z1.shape[0] * world_size()

    def standardise(z: torch.Tensor) -> torch.Tensor:
        mean = all_reduce_with_grad(z.sum(0)) / n
        var = all_reduce_with_grad((z - mean).pow(2).sum(0)) / n
        return (z - mean) / torch.sqrt(var + eps)

    return all_reduce_with_grad(standardise(z1).T @ standardise(z2)) / n


@full_precision
def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051) -> torch.Tensor:
    """Barlow Twins (Zbontar et al., ICML 2021, eq. 1): sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2."""
    c = cross_correlation(z1, z2)
    diag = c.diagonal()
    return (1 - diag).pow(2).sum() + lambd * (c.pow(2).sum() - diag.pow(2).sum())


@full_precision
def supcon_loss(z1: torch.Tensor, z2: torch.Tensor | None, labels: torch.Tensor,
                temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss, L_out form (Khosla et al., NeurIPS 2020, eq. 2).

    Every view (``z1`` and, if given, ``z2``; of all ranks) is an anchor i; its positives P(i) are all
    other views with the same label, A(i) all other views:
    L_i = -1/|P(i)| sum_{p in P(i)} log exp(s_ip / T) / sum_{a in A(i)} exp(s_ia / T), s = cosine similarity.
    Anchors with no positive contribute nothing; returns the mean over anchors that have one (0 if none).
    With all labels distinct this is SimCLR's NT-Xent. Under torch.distributed each rank returns its
    anchors' share, scaled so that the mean over ranks is the global mean (what DDP's averaging needs).
    """
    views = [F.normalize(z.float(), dim=1) for z in ((z1,) if z2 is None else (z1, z2))]
    local = torch.cat(views)
    everyone = torch.cat([gather_with_grad(z) for z in views])
    n, total = z1.shape[0], everyone.shape[0] // len(views)
    all_labels = gather(labels).repeat(len(views))
    own = torch.cat([_global_index(n, z1.device) + v * total for v in range(len(views))])
    is_self = torch.zeros(local.shape[0], everyone.shape[0], dtype=torch.bool, device=z1.device)
    is_self[torch.arange(local.shape[0], device=z1.device), own] = True
    positive = (all_labels[own][:, None] == all_labels[None, :]) & ~is_self
    logits = local @ everyone.T / temperature
    log_prob = logits - torch.logsumexp(logits.masked_fill(is_self, float("-inf")), dim=1, keepdim=True)
    count = positive.sum(1)
    per_anchor = -torch.where(positive, log_prob, 0.0).sum(1) / count.clamp(min=1)
    anchors = gather((count > 0).sum().view(1)).sum().clamp(min=1)
    return per_anchor.sum() * world_size() / anchors


@full_precision
def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, margin: float = 0.5, mining: str = "hard",
                 generator: torch.Generator | None = None, candidates: int = 0, top_k: int = 1) -> torch.Tensor:
    """Margin ranking loss of Wang & Gupta (ICCV 2015, eq. 2): max(0, D(a, p) - D(a, n) + margin), with the
    cosine distance D = 1 - cos. ``anchor[i]`` and ``positive[i]`` belong together; the negatives of anchor i
    are other samples' positives (of all ranks).

    ``mining="random"``: one uniformly random other sample (drawn from ``generator``). ``"hard"``: the
    ``top_k`` closest to the anchor among ``candidates`` random other samples (0: among all of them); the
    paper's hard negative mining takes the top 4 of 100. Returns the mean over anchors and their negatives.
    """
    if mining not in ("hard", "random"):
        raise ValueError(f"triplet mining must be 'hard' or 'random' (got {mining!r})")
    a, p = F.normalize(anchor.float(), dim=1), F.normalize(positive.float(), dim=1)
    if mining == "random" and (candidates or top_k != 1):
        raise ValueError("triplet candidates and top_k apply to hard mining")
    others = gather_with_grad(p)
    total = others.shape[0]
    if total < 2:
        raise ValueError("the triplet loss needs at least two samples (one is the other's negative)")
    pool = total - 1 if candidates <= 0 else min(candidates, total - 1)
    if not 1 <= top_k <= pool:
        raise ValueError(f"triplet top_k must be between 1 and the {pool} candidate negatives (got {top_k})")
    own = _global_index(a.shape[0], a.device)
    dist_an = 1 - a @ others.T
    device = generator.device if generator is not None else None
    if mining == "hard":
        is_own = own[:, None] == torch.arange(total, device=a.device)
        if pool < total - 1:  # a random subset of the others: the smallest of uniform keys, own key set above 1
            keys = torch.rand(a.shape[0], total, generator=generator, device=device).to(a.device)
            chosen = keys.masked_fill(is_own, 2.0).topk(pool, dim=1, largest=False).indices
            neg = dist_an.gather(1, chosen).topk(top_k, dim=1, largest=False).values
        else:
            neg = dist_an.masked_fill(is_own, float("inf")).topk(top_k, dim=1, largest=False).values
    else:  # a random other sample: own position shifted by 1 .. total - 1
        shift = torch.randint(1, total, (a.shape[0],), generator=generator, device=device).to(a.device)
        neg = dist_an.gather(1, ((own + shift) % total)[:, None])
    return F.relu((1 - (a * p).sum(1, keepdim=True)) - neg + margin).mean()
