"""A learned, sparse combination of a trunk's stage maps: the lasso architecture of Doersch & Zisserman,
"Multi-task Self-Supervised Visual Learning", ICCV 2017 (section 5, figure 1b), where every task's head reads its
own linear combination of the trunk's layers, with an L1 penalty on the combination weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class StageMix(nn.Module):
    """Maps ``s_1 .. s_S`` of a trunk (``(B, C_i, H_i, W_i)``) to ``sum_i g_i P_i(pool_i(s_i))``, a map shaped as the
    last stage's ``(B, C_S, H_S, W_S)``: ``pool_i`` is the adaptive average pooling to the last map's size, ``P_i`` a
    1x1 projection to ``C_S`` channels whose rows have unit norm (the identity for the last stage when ``out`` is
    ``C_S``), and ``g`` the per-stage gates (:attr:`gates`; the last 1, the others 0 at first: the head starts on the
    last map, as the paper's naive shared trunk). The paper's units all share one shape, so it mixes them as they
    are; here stages differ in channels and size, hence the pooling and the projections, whose unit rows leave a
    stage's weight to its gate alone (the L1 penalty, :meth:`penalty`, cannot be evaded by scaling a projection).
    """

    def __init__(self, channels: list[int], out: int | None = None) -> None:
        super().__init__()
        out = channels[-1] if out is None else out
        self.gates = nn.Parameter(torch.zeros(len(channels)))
        with torch.no_grad():
            self.gates[-1] = 1.0
        self.identity_last = channels[-1] == out
        kept = channels[:-1] if self.identity_last else channels
        self.projections = nn.ParameterList(nn.Parameter(F.normalize(torch.randn(out, c), dim=1)) for c in kept)

    def forward(self, maps: list[Tensor]) -> Tensor:
        size = maps[-1].shape[-2:]
        mixed = maps[-1] * self.gates[-1] if self.identity_last else 0.0
        for gate, weight, x in zip(self.gates, self.projections, maps, strict=False):
            pooled = F.adaptive_avg_pool2d(x, size)
            mixed = mixed + gate * F.conv2d(pooled, F.normalize(weight, dim=1)[..., None, None].to(pooled.dtype))
        return mixed

    def penalty(self) -> Tensor:
        """The lasso term ``sum_i |g_i|``."""
        return self.gates.abs().sum()
