"""Frozen-feature extraction with the evaluation transform (resize, normalise)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones import stage_outputs
from selfsup.data.views import eval_view
from selfsup.distributed import gather_rows, is_distributed, rank, world_size

#: per-layer probes pool each stage's map to at most this many values per image
MAX_STAGE_DIM = 2048


def pool_stage(fmap: torch.Tensor, max_dim: int = MAX_STAGE_DIM) -> torch.Tensor:
    """Average-pool a (B, C, H, W) map to s x s with C * s * s <= max_dim (s >= 1), flattened."""
    if fmap.dim() == 2:
        return fmap
    c, h = fmap.shape[1], fmap.shape[2]
    s = max(1, min(h, int((max_dim / c) ** 0.5)))
    return F.adaptive_avg_pool2d(fmap, s).flatten(1)


@torch.no_grad()
def extract_features(backbone: nn.Module, images: torch.Tensor, image_size: int, batch_size: int = 512,
                     device: torch.device | str | None = None, stages: bool = False, max_dim: int = MAX_STAGE_DIM):
    """Backbone features ``(N, D)`` as float32 on the CPU (or a list, one per stage, if ``stages``).

    The backbone runs in eval mode (BN uses running statistics) and in float32 even where training used
    bf16 autocast (evaluation is a small share of a run's time), and is put back as it was. Under
    torch.distributed every rank embeds its share of the images and all ranks receive all features.
    """
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    n, share = len(images), -(-len(images) // world_size())
    mine = images[rank() * share : (rank() + 1) * share]
    empty = len(mine) == 0  # more ranks than images: embed one image for the feature width, keep none
    if empty:
        mine = images[:1]
    was_training = backbone.training
    backbone.eval()
    out: list[list[torch.Tensor]] = []
    try:
        for start in range(0, len(mine), batch_size):
            x = eval_view(mine[start : start + batch_size].to(device, non_blocking=True), image_size)
            feats = [pool_stage(f, max_dim) for f in stage_outputs(backbone, x)] if stages else [backbone(x)]
            out.append([f.float().cpu() for f in feats])
    finally:
        backbone.train(was_training)
    cols = [torch.cat(parts)[: 0 if empty else None] for parts in zip(*out)]
    if is_distributed():
        cols = [gather_rows(c, share, n, device) for c in cols]
    return cols if stages else cols[0]
