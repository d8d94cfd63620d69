"""Captions as fields: UTF-8 bytes in a zero-padded uint8 row per sample (tokeniser-free, byte-level), so text is
sliced with the batch and moved to the device like the images (``ImageSet.fields["text"]``)."""

from __future__ import annotations

import torch

TEXT_LENGTH = 128  # bytes kept per caption (longer ones are cut at a character boundary)


def encode_texts(texts: list[str], length: int = TEXT_LENGTH) -> torch.Tensor:
    """``(N, length)`` uint8: each text's UTF-8 bytes, cut to ``length`` without splitting a character, then zeros."""
    out = torch.zeros(len(texts), length, dtype=torch.uint8)
    for i, text in enumerate(texts):
        data = text.encode("utf-8")[:length].decode("utf-8", errors="ignore").encode("utf-8")
        out[i, : len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else out[i, :0]
    return out


def decode_texts(rows: torch.Tensor) -> list[str]:
    """The texts of :func:`encode_texts` rows (trailing zeros dropped)."""
    return [bytes(r[r != 0].tolist()).decode("utf-8", errors="replace") for r in rows.cpu()]
