"""Random rescaled (Krähenbühl et al., ICLR 2016): within layers every unit's output is zero-mean and unit-variance
per channel on the data; between layers the rates of change equalise while a chain's output only changes scale."""

import pytest
import torch
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.evaluate.rescale import rate_ratios, rescale_between, rescale_within, units


def images(n=64, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def unit_outputs(net, x):
    """Every unit's output (the norm's when it has one), channels first, by a plain forward with hooks."""
    outs = []
    for layer, norm in units(net, x):
        seen: list[torch.Tensor] = []
        h = (norm or layer).register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.detach().clone()))
        with torch.no_grad():
            net(x)
        h.remove()
        outs.append(seen[0].transpose(0, 1).flatten(1).double())
    return outs


@pytest.mark.parametrize("name", ["small", "alexnet", "resnet18"])
def test_within_layers_every_unit_is_zero_mean_unit_variance_per_channel_on_the_data(name):
    torch.manual_seed(0)
    net = build_backbone(name, 16)
    x = images()
    rescale_within(net, x)
    for out in unit_outputs(net, x):
        torch.testing.assert_close(out.mean(1), torch.zeros(len(out), dtype=torch.double), atol=1e-3, rtol=0)
        torch.testing.assert_close(out.var(1, unbiased=False), torch.ones(len(out), dtype=torch.double),
                                   atol=2e-3, rtol=0)


def test_units_without_a_norm_are_rescaled_through_their_weights_and_bias():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 12 * 12, 5))
    x = images()
    assert [n for _, n in units(net, x)] == [None] * 3
    rescale_within(net, x)
    for out in unit_outputs(net, x):
        torch.testing.assert_close(out.mean(1), torch.zeros(len(out), dtype=torch.double), atol=1e-4, rtol=0)
        torch.testing.assert_close(out.var(1, unbiased=False), torch.ones(len(out), dtype=torch.double),
                                   atol=1e-3, rtol=0)


def test_units_pair_each_layer_with_the_norm_that_follows_it():
    net = build_backbone("small", 16)
    pairs = units(net, images(4))
    assert [type(layer) for layer, _ in pairs] == [nn.Conv2d] * 4
    assert all(norm is block[1] for (_, norm), block in zip(pairs, net.blocks))


def test_rate_ratios_follow_the_definition():
    """R_k against autograd on a plain loop: one direction, sqrt(|dL/dW|^2) / |W|."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 3)).eval()
    x = images(8)
    ratios = rate_ratios(net, x, directions=1, seed=3)
    g = torch.randn(8, 3, generator=torch.Generator().manual_seed(3))
    net.zero_grad()
    (net(x) * g).sum().div(8).backward()
    expected = [net[0].weight.grad.norm() / net[0].weight.norm(), net[3].weight.grad.norm() / net[3].weight.norm()]
    torch.testing.assert_close(ratios.float(), torch.stack(expected).detach(), rtol=1e-4, atol=0)


def test_between_layers_equalises_the_rates_and_only_scales_a_chains_output():
    torch.manual_seed(0)
    net = build_backbone("small", 16)
    x = images()
    rescale_within(net, x)
    before_out = net(x).detach().double()
    before = rate_ratios(net, x).log()
    rescale_between(net, x, iterations=10)
    after = rate_ratios(net, x).log()
    assert after.std() < 0.1 * before.std()  # the spread of log rates shrinks by an order of magnitude
    out = net(x).detach().double()
    scale = (out * before_out).sum() / before_out.square().sum()
    torch.testing.assert_close(out, scale * before_out, rtol=1e-4, atol=1e-6)  # ReLU, max-pool, BN: homogeneous
