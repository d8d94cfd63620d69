"""A small Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale", ICLR 2021) with MAE's fixed 2-D sin-cos position embeddings (He et al., "Masked
Autoencoders Are Scalable Vision Learners", CVPR 2022), and :func:`token_encoder`: the pieces of a ViT (ours or a
timm one) that a method runs on a subset of the patch tokens.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.backbones.base import Backbone, StageInfo
from selfsup.errors import UserError


def default_patch_size(image_size: int) -> int:
    """4 px below 64 px (8 x 8 tokens at 32 px), 8 px below 160 px (64, 96 px), else ViT's 16 px (14 x 14 at 224)."""
    return 4 if image_size < 64 else 8 if image_size < 160 else 16


def sincos_2d(dim: int, height: int, width: int) -> Tensor:
    """Fixed 2-D sin-cos position embeddings ``(height * width, dim)`` of a row-major grid (MAE): the first half of
    the channels encodes the row, the second the column, each as ``[sin(pos w_k), cos(pos w_k)]`` with
    ``w_k = 10000^(-k / (dim / 4))``, ``k < dim / 4``."""
    if dim % 4:
        raise UserError(f"2-D sin-cos position embeddings need a width divisible by 4 (got {dim})")
    omega = 10000.0 ** -(torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                                indexing="ij")
    parts = [f(pos.reshape(-1, 1) * omega) for pos in (rows, cols) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, 1).float()


class Block(nn.Module):
    """A pre-norm transformer block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))`` (GELU, hidden ``mlp_ratio * dim``),
    attention by ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % heads:
            raise UserError(f"a transformer of width {dim} cannot have {heads} heads")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


def init_transformer(module: nn.Module) -> None:
    """MAE's initialisation: Xavier-uniform linear weights (and patch projection, as a linear map), zero biases,
    unit LayerNorms; the caller draws its class and mask tokens (normal, std 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ViT(Backbone):
    """ViT-Tiny (width 192, depth 12, 3 heads) with ``width`` scaling the token width (rounded to a multiple of 12:
    3 heads and the sin-cos embedding's 4 parts), on ``patch_size`` patches (:func:`default_patch_size`), a class
    token, fixed sin-cos position embeddings (the class token's are zero, as MAE's) and a final LayerNorm.

    The features are the class token after the final norm (as timm's ViTs and MAE's linear probe).
    ``forward_features`` gives all tokens ``(B, 1 + N, D)`` after the final norm (timm's layout); the stages are
    the patch tokens as maps ``(B, D, H / p, W / p)`` after every ``depth / stages``-th block (blocks 3, 6, 9, 12),
    the last one after the final norm, so ``feature_map`` is the normalised patch-token grid.
    """

    def __init__(self, image_size: int = 32, in_channels: int = 3, width: float = 1.0, depth: int = 12,
                 heads: int = 3, patch_size: int | None = None, stages: int = 4) -> None:
        super().__init__()
        dim = max(12, 12 * round(192 * width / 12))
        self.patch_size = p = patch_size or default_patch_size(image_size)
        if image_size < p:
            raise UserError(f"a {image_size} px image holds no {p} px ViT patch")
        self.dim, self.grid = dim, image_size // p
        self.patch_embed = nn.Conv2d(in_channels, dim, p, p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", self._positions(self.grid, self.grid), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.ends = [depth * (i + 1) // stages for i in range(stages)]
        self.in_channels, self.out_dim = in_channels, dim
        self.stage_info = [StageInfo(f"block{e}", dim, p) for e in self.ends]
        init_transformer(self)
        nn.init.normal_(self.cls_token, std=0.02)

    def _positions(self, height: int, width: int) -> Tensor:
        """``(1, 1 + height * width, dim)``: zero for the class token, then the grid's sin-cos embeddings."""
        return torch.cat([torch.zeros(1, self.dim), sincos_2d(self.dim, height, width)]).unsqueeze(0)

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The class token ``(B, 1, D)`` and the patch tokens ``(B, N, D)`` (row-major), with their positions."""
        tokens = self.patch_embed(x)
        h, w = tokens.shape[-2:]
        pos = self.pos_embed if (h, w) == (self.grid, self.grid) else self._positions(h, w).to(tokens)
        tokens = tokens.flatten(2).transpose(1, 2) + pos[:, 1:]
        return (self.cls_token + pos[:, :1]).expand(tokens.shape[0], -1, -1), tokens

    def _stage_tokens(self, x: Tensor) -> list[Tensor]:
        """All tokens after every stage's last block; the last after the final norm."""
        cls, patches = self.embed(x)
        t, outs = torch.cat([cls, patches], 1), []
        for i, block in enumerate(self.blocks, 1):
            t = block(t)
            if i in self.ends:
                outs.append(t)
        outs[-1] = self.norm(outs[-1])
        return outs

    def _grid(self, tokens: Tensor, x: Tensor) -> Tensor:
        """The patch tokens of ``tokens`` ``(B, 1 + N, D)`` as a map ``(B, D, H / p, W / p)``."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        return [self._grid(t, x) for t in self._stage_tokens(x)]

    def forward_features(self, x: Tensor) -> Tensor:
        return self._stage_tokens(x)[-1]

    def forward_head(self, fmap: Tensor) -> Tensor:
        """The class token of the normalised tokens."""
        return fmap[:, 0]

    def feature_map(self, x: Tensor) -> Tensor:
        return self._grid(self.forward_features(x), x)


class TokenEncoder(Protocol):
    """What a method needs to run a ViT on a subset of its patch tokens (MAE): the embedding, split into the prefix
    tokens (class, registers) and the patch tokens, both with their positions; the blocks; the final norm."""

    patch_size: int
    blocks: nn.Module
    norm: nn.Module

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]: ...


class TimmTokens:
    """A timm ``VisionTransformer`` seen as a :class:`TokenEncoder`: timm's own patch embedding, prefix tokens and
    position embeddings (``_pos_embed``, whichever layout the model has), its pre-norm, blocks and final norm."""

    def __init__(self, net: nn.Module) -> None:
        self.net, self.blocks, self.norm = net, net.blocks, net.norm
        self.patch_size = int(net.patch_embed.patch_size[0])

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        t = self.net.norm_pre(self.net._pos_embed(self.net.patch_embed(x)))
        return t[:, : self.net.num_prefix_tokens], t[:, self.net.num_prefix_tokens :]


def token_encoder(backbone: nn.Module) -> TokenEncoder:
    """``backbone`` as a :class:`TokenEncoder`: our :class:`ViT`, or a ``timm:`` ViT with absolute position
    embeddings and square patches; anything else is a UserError."""
    if isinstance(backbone, ViT):
        return backbone
    net = getattr(backbone, "net", None)
    parts = ("patch_embed", "_pos_embed", "num_prefix_tokens", "norm_pre", "blocks", "norm")
    if net is not None and all(hasattr(net, a) for a in parts) and getattr(net, "pos_embed", None) is not None:
        size = net.patch_embed.patch_size
        if size[0] == size[-1]:
            return TimmTokens(net)
    name = getattr(backbone, "model_name", type(backbone).__name__)
    raise UserError(f"the backbone '{name}' is not a vision transformer with absolute position embeddings and "
                    f"square patches (masking runs the encoder on a subset of patch tokens): use vit-tiny or a "
                    f"timm ViT such as timm:vit_tiny_patch16_224")
