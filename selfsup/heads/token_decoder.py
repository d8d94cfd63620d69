"""The masked autoencoder's light transformer decoder (He, Chen, Xie, Li, Dollár, Girshick, "Masked Autoencoders
Are Scalable Vision Learners", CVPR 2022): from the encoder's tokens of the visible patches to a prediction for
every patch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.backbones.vit import Block, init_transformer, sincos_2d
from selfsup.data.ops.tokens import gather_tokens


class TokenDecoder(nn.Module):
    """The encoder's tokens (``prefix`` class/register tokens, then the visible patches) projected linearly to
    ``dim``; a learnt mask token put in every masked position and all patches restored to image order; fixed 2-D
    sin-cos position embeddings of the ``grid`` x ``grid`` patches (zero on the prefix tokens); ``depth`` pre-norm
    blocks of ``heads`` heads; LayerNorm; a linear map to ``out_dim`` values per patch. The prefix tokens take part
    in the attention and are dropped from the output."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, grid: int, out_dim: int,
                 prefix: int = 1) -> None:
        super().__init__()
        self.prefix = prefix
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        positions = torch.cat([torch.zeros(prefix, dim), sincos_2d(dim, grid, grid)]).unsqueeze(0)
        self.register_buffer("pos_embed", positions, persistent=False)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, out_dim)
        init_transformer(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """``latent`` ``(B, prefix + K, in_dim)``, ``ids_restore`` ``(B, N)`` from
        :func:`~selfsup.data.ops.tokens.mask_from_noise` -> ``(B, N, out_dim)`` in image order."""
        x = self.embed(latent)
        batch, tokens = ids_restore.shape
        visible = x[:, self.prefix :]
        masked = self.mask_token.to(x.dtype).expand(batch, tokens - visible.shape[1], -1)
        patches = gather_tokens(torch.cat([visible, masked], 1), ids_restore)
        x = torch.cat([x[:, : self.prefix], patches], 1) + self.pos_embed
        return self.pred(self.norm(self.blocks(x)))[:, self.prefix :]
