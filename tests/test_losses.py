"""Every loss against a slow float64 reference written straight from the paper's formula."""

import math

import pytest
import torch

from selfsup.losses import byol_regression, nt_xent


def nt_xent_reference(z1, z2, t):
    """SimCLR eq. (1): l(i, j) = -log exp(s_ij / t) / sum_{k != i} exp(s_ik / t), averaged over all 2N anchors."""
    z = torch.cat([z1, z2]).double()
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        sim = [float(z[i] @ z[k] / (z[i].norm() * z[k].norm())) for k in range(n2)]
        denom = sum(math.exp(sim[k] / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(sim[j] / t) / denom)
    return total / n2


@pytest.mark.parametrize("batch", [1, 2, 7, 16])
@pytest.mark.parametrize("temperature", [0.07, 0.5, 1.0])
def test_nt_xent_matches_paper(batch, temperature):
    g = torch.Generator().manual_seed(batch * 100 + int(temperature * 100))
    z1, z2 = torch.randn(batch, 8, generator=g, dtype=torch.float64), torch.randn(batch, 8, generator=g,
                                                                                 dtype=torch.float64)
    got = nt_xent(z1, z2, temperature).item()
    assert got == pytest.approx(nt_xent_reference(z1, z2, temperature), rel=1e-5)


def test_nt_xent_is_low_for_matching_views_and_has_gradients():
    z = torch.randn(32, 16, requires_grad=True)
    aligned = nt_xent(z, z + 0.01 * torch.randn(32, 16), 0.1)
    random = nt_xent(z, torch.randn(32, 16), 0.1)
    assert aligned < random
    aligned.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def byol_reference(p, z):
    """BYOL eq. (2): ||p/|p| - z/|z| ||^2 = 2 - 2 <p, z> / (|p| |z|), mean over the batch."""
    total = 0.0
    for a, b in zip(p.double(), z.double()):
        total += float(((a / a.norm() - b / b.norm()) ** 2).sum())
    return total / p.shape[0]


@pytest.mark.parametrize("batch", [1, 5, 32])
def test_byol_regression_matches_paper(batch):
    g = torch.Generator().manual_seed(batch)
    p, z = torch.randn(batch, 12, generator=g, dtype=torch.float64), torch.randn(batch, 12, generator=g,
                                                                                dtype=torch.float64)
    assert byol_regression(p, z).item() == pytest.approx(byol_reference(p, z), rel=1e-6)


def test_byol_regression_stops_gradient_into_target():
    p, z = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    byol_regression(p, z).backward()
    assert p.grad is not None and z.grad is None


def _every_loss(g):
    """Each batch-mixing loss as a closure over fixed bf16-representable inputs (as a bf16 head emits)."""
    from selfsup import losses

    z1, z2, bank = (torch.randn(s, generator=g).bfloat16().float() for s in ((32, 64), (32, 64), (256, 64)))
    labels = torch.randint(0, 4, (32,), generator=g)
    return {
        "nt_xent": lambda: losses.nt_xent(z1, z2, 0.1),
        "byol": lambda: losses.byol_regression(z1, z2),
        "info_nce": lambda: losses.info_nce(z1, z2, bank, 0.07),
        "instance_softmax": lambda: losses.instance_softmax(z1, bank, torch.arange(32), 0.07),
        "nce": lambda: losses.nce_loss(z1, bank[:32], bank[32:], 1000, 5000.0, 0.07),
        "barlow": lambda: losses.barlow_twins_loss(z1, z2),
        "supcon": lambda: losses.supcon_loss(z1, z2, labels, 0.1),
        "triplet": lambda: losses.triplet_loss(z1, z2, mining="hard"),
    }


@pytest.mark.parametrize("name", ["nt_xent", "byol", "info_nce", "instance_softmax", "nce", "barlow", "supcon",
                                  "triplet"])
def test_losses_stay_float32_inside_bf16_autocast(name):
    """The trainer's bf16 autocast must not reach the losses' similarity matmuls."""
    loss = _every_loss(torch.Generator().manual_seed(0))[name]
    exact = loss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss()
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, exact, rtol=1e-6, atol=1e-6)
