"""Fréchet distance between Gaussians fitted to two feature sets: FID (Heusel et al., NeurIPS 2017).

FID = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)). The caller chooses the network that makes the features.
Only the 2048-d pool3 features of Heusel et al.'s TensorFlow Inception-v3 weights (ported e.g. by pytorch-fid), on
images resized to 299 px, give the standard FID; a distance between features of any other network (e.g. a
self-supervised backbone) is a valid Fréchet distance but is not comparable with published FID numbers. FID is biased
upwards for few samples: compare numbers computed from the same numbers of images (published ones use 10k or 50k).

The reference code (Heusel et al.'s TTUR, and pytorch-fid) takes ``scipy.linalg.sqrtm`` of the non-symmetric
product S1 S2, adds 1e-6 I to both covariances when that fails on near-singular ones, and drops the imaginary part
of the result. Here the trace comes from the symmetric form tr((S1^(1/2) S2 S1^(1/2))^(1/2)), whose inner matrix has
the eigenvalues of S1 S2: two symmetric eigen-decompositions in float64, round-off eigenvalues below zero set to
zero. Singular covariances (fewer samples than feature dimensions) need no offset, and the result is always real.
"""

from __future__ import annotations

import torch

from selfsup.errors import UserError


def feature_statistics(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` features, in float64 (``numpy.cov``)."""
    if feats.dim() != 2 or len(feats) < 2:
        raise UserError(f"FID needs a (N, D) feature matrix with N >= 2 (got shape {tuple(feats.shape)})")
    x = feats.detach().to(torch.float64)
    mu = x.mean(dim=0)
    centred = x - mu
    return mu, centred.T @ centred / (len(x) - 1)


def _psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a positive semi-definite matrix, round-off negative eigenvalues set to zero."""
    values, vectors = torch.linalg.eigh(sigma)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64."""
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise UserError(f"FID statistics do not match: means {tuple(mu1.shape)} and {tuple(mu2.shape)}, "
                        f"covariances {tuple(sigma1.shape)} and {tuple(sigma2.shape)}")
    mu1, mu2, sigma1, sigma2 = (t.detach().to(torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


def fid(real_feats: torch.Tensor, fake_feats: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two ``(N, D)`` feature sets (FID with Inception features)."""
    return frechet_distance(*feature_statistics(real_feats), *feature_statistics(fake_feats))
