"""The class-rebalanced multinomial cross-entropy of colourisation as classification (Zhang, Isola, Efros,
"Colorful Image Colorization", ECCV 2016, eqs. 2-3), over the quantised ab bins of
:mod:`selfsup.data.ops.ab`. Runs in float32 even inside a bf16 autocast region (:mod:`.base`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.base import full_precision


@full_precision
def colorization_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """``mean over pixels of -v(Z) sum_q Z_q log softmax(logits)_q`` with ``v(Z) = weights[argmax_q Z]``.

    ``logits`` (B, Q, H, W) are the decoder's bin scores, ``targets`` (B, Q, H, W) the soft-encoded ground
    truth (:func:`selfsup.data.ops.ab.soft_encode`) at the same resolution, ``weights`` (Q,) the
    rebalancing factors (:func:`selfsup.data.ops.ab.rebalance_weights`). The paper sums eq. 2 over pixels;
    here the sum is divided by the number of pixels B * H * W, so the scale does not depend on batch or map
    size. ``mask`` (B,), optional: images where it is False (e.g. :func:`~selfsup.data.ops.ab.near_grayscale`
    ones) contribute 0 but still count in B * H * W, as the reference code's multiplicative mask does,
    which keeps the normaliser fixed and the step free of host synchronisation. No gradient flows into
    ``targets`` or ``weights``.
    """
    log_probs = F.log_softmax(logits.float(), dim=1)
    z = targets.detach().float()
    v = weights.detach().to(z)[z.argmax(1)]
    if mask is not None:
        v = v * mask.to(v).view(-1, 1, 1)
    return -(v * (z * log_probs).sum(1)).mean()
