"""Loss functions: pure functions of tensors with no hidden state, computed in float32 (:mod:`.base`).

:mod:`.contrastive` holds the contrastive and siamese losses; each family of the catalogue adds its module.
"""

from selfsup.losses.base import full_precision
from selfsup.losses.contrastive import (
    barlow_twins_loss,
    byol_regression,
    cross_correlation,
    info_nce,
    instance_softmax,
    nce_loss,
    nce_normaliser,
    nt_xent,
    supcon_loss,
    triplet_loss,
)

__all__ = ["barlow_twins_loss", "byol_regression", "cross_correlation", "full_precision", "info_nce",
           "instance_softmax", "nce_loss", "nce_normaliser", "nt_xent", "supcon_loss", "triplet_loss"]
