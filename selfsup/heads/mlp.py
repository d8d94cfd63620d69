"""Projection and prediction MLPs (SimCLR, BYOL, MoCo v2, Barlow Twins)."""

from __future__ import annotations

from torch import nn


class MLP(nn.Sequential):
    """``num_layers`` linear layers with BN + ReLU between them (SimCLR/BYOL projector, BYOL predictor).

    ``last_bn`` puts a BatchNorm on the output instead of the last layer's bias (SimCLR v2's head, and
    lightly's SimCLR head); ``hidden_bn=False`` drops the hidden BatchNorms (MoCo v2's head is linear-ReLU-linear).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, last_bn: bool = False,
                 hidden_bn: bool = True):
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == num_layers - 1
            followed_by_bn = last_bn if last else hidden_bn  # a BatchNorm right after makes the bias redundant
            layers.append(nn.Linear(a, b, bias=not followed_by_bn))
            if not last:
                layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)] if hidden_bn else [nn.ReLU(inplace=True)]
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim))
        super().__init__(*layers)
