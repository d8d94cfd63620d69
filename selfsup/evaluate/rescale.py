"""Random rescaled: the lower bound the seeds' tables carry next to plain random init (Krähenbühl, Doersch, Donahue,
Darrell, "Data-dependent Initializations of Convolutional Neural Networks", ICLR 2016).

A random network is rescaled from data statistics in two steps:

1. **within layers** (the paper's algorithm 1): in forward order, every unit's output is made zero-mean and
   unit-variance per channel on a batch of images. A unit is a convolution or linear layer with the batch norm that
   follows it, if any: the norm's running statistics take the data's (in evaluation mode it then normalises exactly);
   a unit without a norm has its weights divided by the standard deviation and the mean removed through its bias.
2. **between layers** (algorithm 2): every layer's weights should change at the same rate under gradient descent,
   i.e. the same ratio ``R_k = |dL/dW_k| / |W_k|`` for a loss linear in the output (random directions here). In a
   chain of positively homogeneous layers (ReLU, pooling), scaling ``W_k`` by ``r_k`` and the unit's bias-like terms
   (bias, norm mean and shift) by ``P_k = r_1 ... r_k`` scales the output by ``P_L`` and ``R_k`` by
   ``P_L / r_k^2``, so ``r_k = (R_k / mean R)^(alpha / 2)`` (geometric mean) equalises the ratios; it is repeated
   ``iterations`` times with damping ``alpha``. Exact for chains (small, alexnet, nin); for residual nets, whose
   branches meet, it is the same update and only approximately homogeneous.
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.data.views import eval_view

WEIGHTED = (nn.Conv2d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def units(net: nn.Module, images: torch.Tensor) -> list[tuple[nn.Module, nn.Module | None]]:
    """The convolution / linear layers of ``net`` in the order a forward pass on ``images`` calls them, each with the
    batch norm called right after it (or None)."""
    calls: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append(m)) for m in net.modules()
             if isinstance(m, WEIGHTED + NORMS)]
    try:
        with torch.no_grad():
            net(images)
    finally:
        for h in hooks:
            h.remove()
    return [(m, calls[i + 1] if i + 1 < len(calls) and isinstance(calls[i + 1], NORMS) else None)
            for i, m in enumerate(calls) if isinstance(m, WEIGHTED)]


def _output_of(net: nn.Module, layer: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What ``layer`` outputs during a forward pass of ``net`` on ``images``, channels first: (C, everything else)
    (a copy: an in-place ReLU after the layer would change it)."""
    seen: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        net(images)
    finally:
        hook.remove()
    out = seen[0].float()
    return out.transpose(0, 1).flatten(1)


@torch.no_grad()
def rescale_within(net: nn.Module, images: torch.Tensor, eps: float = 1e-5) -> None:
    """Algorithm 1 in place: every unit's output zero-mean, unit-variance per channel on ``images`` (eval mode)."""
    net.eval()
    for layer, norm in units(net, images):
        out = _output_of(net, layer, images)
        mean, std = out.mean(1), out.std(1, unbiased=False).clamp_min(eps)
        if norm is not None:
            norm.running_mean.copy_(mean)
            norm.running_var.copy_((std.square() - norm.eps).clamp_min(0.0))
            if norm.affine:
                norm.weight.fill_(1.0)
                norm.bias.zero_()
            continue
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        layer.weight.div_(std.view(shape))
        if layer.bias is not None:
            layer.bias.sub_(mean).div_(std)


def rate_ratios(net: nn.Module, images: torch.Tensor, directions: int = 2, seed: int = 0,
                layers: list[nn.Module] | None = None) -> torch.Tensor:
    """``R_k = sqrt(E |dL/dW_k|^2) / |W_k|`` for every unit (or ``layers``), L = <net(images), g> with ``directions``
    random Gaussian directions g per image (the same for a given seed)."""
    layers = layers if layers is not None else [layer for layer, _ in units(net, images)]
    generator = torch.Generator().manual_seed(seed)
    squares = torch.zeros(len(layers), dtype=torch.float64)
    for _ in range(directions):
        net.zero_grad(set_to_none=True)
        out = net(images)
        g = torch.randn(out.shape, generator=generator).to(out.device)
        (out.float() * g).sum().div(len(images)).backward()
        squares += torch.stack([layer.weight.grad.double().square().sum().cpu() for layer in layers])
    net.zero_grad(set_to_none=True)
    norms = torch.stack([layer.weight.detach().double().norm().cpu() for layer in layers])
    return (squares / directions).sqrt() / norms


@torch.no_grad()
def _scale(layer: nn.Module, norm: nn.Module | None, r: float, cumulative: float) -> None:
    layer.weight.mul_(r)
    if layer.bias is not None:
        layer.bias.mul_(cumulative)
    if norm is not None:
        norm.running_mean.mul_(cumulative)
        if norm.affine:
            norm.bias.mul_(cumulative)


def rescale_between(net: nn.Module, images: torch.Tensor, iterations: int = 10, alpha: float = 0.5) -> None:
    """Algorithm 2 in place (eval mode): equalise the units' rates of change, ``iterations`` damped steps."""
    net.eval()
    pairs = units(net, images)
    layers = [layer for layer, _ in pairs]
    for _ in range(iterations):
        ratios = rate_ratios(net, images, layers=layers)
        scales = (ratios / ratios.log().mean().exp()).pow(alpha / 2)
        cumulative = 1.0
        for (layer, norm), r in zip(pairs, scales.tolist(), strict=True):
            cumulative *= r
            _scale(layer, norm, r, cumulative)


def random_rescaled(net: nn.Module, images: torch.Tensor, image_size: int, count: int = 128, iterations: int = 10,
                    device: torch.device | str | None = None) -> nn.Module:
    """``net`` (a random network) rescaled in place within and between layers on the first ``count`` of ``images``
    (uint8, a training set's) as evaluation shows them (resized to ``image_size``, normalised); returns it."""
    device = torch.device(device) if device is not None else next(net.parameters()).device
    x = eval_view(images[:count].to(device), image_size)
    rescale_within(net, x)
    rescale_between(net, x, iterations)
    return net
