"""A small byte-level text encoder for captions (the ``text`` field: UTF-8 bytes, zero-padded; selfsup.data.text).

CLIP's text tower (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML
2021) is a 63M-parameter transformer over byte-pair tokens; this is a few transformer layers over raw bytes, so that
no tokeniser or vocabulary file is needed and any language's captions encode alike.
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.data.text import TEXT_LENGTH

BOS = 256  # the start token every caption begins with (so an empty caption still has one token)


class ByteTextEncoder(nn.Module):
    """Captions ``(B, L)`` uint8 -> ``(B, width)`` features: an embedding of the 256 byte values (and a start token)
    plus learned positions, ``layers`` pre-norm transformer layers in which padding (byte 0) is masked out of every
    attention, and the mean of the start token's and the caption bytes' outputs (padding excluded), layer-normed.
    Trailing padding changes nothing: it is cut before the layers, and padding inside the batch is masked."""

    def __init__(self, width: int = 128, layers: int = 2, heads: int = 4, max_length: int = TEXT_LENGTH) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"the text width {width} must be a multiple of its {heads} heads")
        self.width, self.max_length = width, max_length
        self.tokens = nn.Embedding(257, width)
        self.positions = nn.Parameter(torch.randn(max_length + 1, width) * 0.01)
        nn.init.normal_(self.tokens.weight, std=0.02)  # CLIP's initialisation of its token embedding
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        rows = rows.long()
        columns = torch.arange(1, rows.shape[1] + 1, device=rows.device)
        length = int((rows.ne(0).any(0) * columns).max()) if rows.numel() else 0  # one past any row's last byte
        if length > self.max_length:
            raise ValueError(f"captions of up to {self.max_length} bytes fit the text encoder (got {length})")
        rows = torch.cat([torch.full_like(rows[:, :1], BOS), rows[:, :length]], 1)
        keep = rows.ne(0)  # the start token and the caption's bytes
        x = self.tokens(rows) + self.positions[: rows.shape[1]]
        x = self.blocks(x, src_key_padding_mask=~keep)
        w = keep.unsqueeze(-1).to(x.dtype)
        return self.norm((x * w).sum(1) / w.sum(1))
