"""Supervised contrastive learning: every same-label view is a positive (Khosla et al., NeurIPS 2020)."""

from __future__ import annotations

from dataclasses import replace

import torch

from selfsup.losses import supcon_loss
from selfsup.methods.base import Batch
from selfsup.methods.panels import Panel
from selfsup.methods.simclr import SimCLR


class SupCon(SimCLR):
    """SimCLR's views and projector with the L_out supervised contrastive loss over both views (T = 0.1)."""

    name = "supcon"
    paper = "Khosla et al., Supervised Contrastive Learning, NeurIPS 2020"
    needs_labels = True

    def __init__(self, *args, temperature: float = 0.1, **kwargs) -> None:
        super().__init__(*args, temperature=temperature, **kwargs)

    def objective(self, z1: torch.Tensor, z2: torch.Tensor, batch: Batch) -> torch.Tensor:
        return supcon_loss(z1, z2, batch.labels, self.temperature)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        """SimCLR's two views, captioned with the labels: every view of the same class is a positive."""
        return [replace(p, captions=[f"class {c}" for c in batch.labels.tolist()]) for p in super().views(batch)]
