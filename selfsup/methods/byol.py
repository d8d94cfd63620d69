"""BYOL: online network regresses an EMA target's projection of the other view (Grill et al., NeurIPS 2020)."""

from __future__ import annotations

import copy

import torch

from selfsup.data.views import augmented_views
from selfsup.dynamics.ema import cosine_tau, ema_update
from selfsup.heads import MLP
from selfsup.losses import byol_regression
from selfsup.methods.base import Batch, Method


class BYOL(Method):
    """An online network (backbone, projector, predictor) regresses the projection that a target network (an EMA
    of backbone and projector, tau from ``tau_base`` to 1 by a cosine schedule) gives the other view; the loss
    2 - 2 cos is symmetrised over the two views. No negatives: the predictor and the slowly moving target keep it
    from collapsing. LARS as in the paper (lr 0.2 x batch/256, weight decay 1.5e-6)."""

    name = "byol"
    paper = "Grill et al., Bootstrap Your Own Latent, NeurIPS 2020"
    # the paper's optimiser: LARS, lr 0.2 x batch/256, weight decay 1.5e-6 (plain SGD left digits' kNN below random)
    optimizer = "lars"
    base_lr = 0.2
    weight_decay = 1.5e-6

    def __init__(self, *args, tau_base: float = 0.99, proj_hidden_dim: int = 1024, proj_dim: int = 256,
                 pred_hidden_dim: int = 1024, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tau_base = tau_base
        self.projector = MLP(self.feat_dim, proj_hidden_dim, proj_dim)
        self.predictor = MLP(proj_dim, pred_hidden_dim, proj_dim)
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def training_step(self, batch: Batch) -> torch.Tensor:
        x = augmented_views(batch.images, self.aug, self.image_size, batch.generator)
        p1, p2 = self.predictor(self.projector(self.backbone(x))).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_backbone(x)).chunk(2)
        return byol_regression(p1, z2) + byol_regression(p2, z1)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        tau = cosine_tau(self.tau_base, progress)
        ema_update(self.target_backbone, self.backbone, tau)
        ema_update(self.target_projector, self.projector, tau)
