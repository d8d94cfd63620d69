"""The contract every backbone built here keeps: per-stage facts and maps, the last map, pooled features.

It follows timm's feature API (``feature_info``, ``forward_features``, ``forward_head``,
``forward_intermediates``): a backbone maps images ``(B, in_channels, H, W)`` to

- ``forward_stages(x)``: every stage's map, ``(B, C_i, H_i, W_i)`` with ``H_i`` = ``H / stride_i`` up to rounding,
  described by ``stage_info[i]`` (name, channels, stride);
- ``forward_features(x)``: the last stage's map (timm transformers: timm's own token tensor, see ``timm_backbone``);
- ``forward_head(fmap)``: the global pooling that turns it into features ``(B, out_dim)``;
- ``forward(x)`` = ``forward_head(forward_features(x))``.

``feature_map(x)`` is the last *spatial* map ``(B, C, h, w)``; for the convnets here it is ``forward_features(x)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class StageInfo:
    """One stage of a backbone: its name (the per-layer probe's column), output channels, and total stride."""

    name: str
    channels: int
    stride: int


class Backbone(nn.Module):
    """Base class of the backbones built here. Subclasses set ``stage_info``, ``in_channels`` and ``out_dim`` and
    either hold their stages in order in ``self.stages`` (an ``nn.ModuleList``) or override ``forward_stages``.
    """

    stage_info: list[StageInfo]
    in_channels: int
    out_dim: int
    stages: nn.ModuleList  # read by the default forward_stages

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The stages' names, in order (what :func:`selfsup.backbones.stage_names` returns)."""
        return tuple(s.name for s in self.stage_info)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Every stage's output map, in order."""
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's map."""
        return self.forward_stages(x)[-1]

    def forward_head(self, fmap: Tensor) -> Tensor:
        """Global average pooling ``(B, C, h, w) -> (B, C)``; trunks with another pooling override it."""
        return fmap.mean(dim=(2, 3))

    def feature_map(self, x: Tensor) -> Tensor:
        """The last spatial map ``(B, C, h, w)``."""
        return self.forward_features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, rounded, at least 1."""
    return max(1, round(channels * width))


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int | None = None) -> nn.Sequential:
    """Conv (no bias: the BN shifts) - BatchNorm - ReLU; ``padding`` defaults to ``kernel // 2`` (size kept)."""
    padding = kernel // 2 if padding is None else padding
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))
