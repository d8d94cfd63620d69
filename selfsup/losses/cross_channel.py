"""The classification loss of cross-channel prediction (Zhang, Isola, Efros, "Split-Brain Autoencoders: Unsupervised
Learning by Cross-Channel Prediction", CVPR 2017, eq. 2) with the paper's 1-hot targets (appendix B: no soft encoding,
no class rebalancing), for both sub-networks of a split-brain autoencoder (eq. 3). Runs in float32 even inside a bf16
autocast region (:mod:`.base`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.base import full_precision


@full_precision
def split_brain_loss(ab_logits: torch.Tensor, ab_targets: torch.Tensor, lightness_logits: torch.Tensor,
                     lightness_targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both sub-networks' cross-entropies ``-sum_{h,w} log softmax(F(X))_{h,w,q*}`` (eq. 2 with 1-hot ``H``), each
    divided by its number of pixels B * H * W (as :func:`~selfsup.losses.colour.colorization_loss`):

    - ``colour``: L -> ab, ``ab_logits`` (B, Q_ab, H, W) against the ab bin of every pixel ``ab_targets`` (B, H, W);
    - ``lightness``: ab -> L, ``lightness_logits`` (B, Q_L, H', W') against ``lightness_targets`` (B, H', W').

    The two sub-networks share no parameter, so minimising the sum trains each on its own loss as eq. 3 does.
    """
    return {"colour": F.cross_entropy(ab_logits.float(), ab_targets),
            "lightness": F.cross_entropy(lightness_logits.float(), lightness_targets)}
