"""The pointer of colourisation as tracking (Vondrick, Shrivastava, Fathi, Guadarrama, Murphy, "Tracking Emerges
by Colorizing Videos", ECCV 2018, eqs. 1-2): every target position points at the reference positions with weights
``A_ij = exp(f_i . f_j / T) / sum_k exp(f_k . f_j / T)`` (i over the reference, j over the target), the target's
colours (or labels) are copied as ``y_j = sum_i A_ij c_i``, and the loss is the cross-entropy of the copied colour
distribution against the target's own quantised colour; labels of a clip's first frame propagate through it by
the same copy (section 4). Feature maps are ``(B, D, h, w)``: any spatial layout, the
positions are flattened, so several reference frames side by side (concatenated along the width) are one reference.
Runs in float32 even inside a bf16 autocast region (:mod:`.base`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.base import full_precision


def pointer_logits(reference: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log A`` (B, J, I): for every target position j, the log-softmax over the reference positions i of
    ``f_i . f_j / temperature``."""
    scores = torch.einsum("bdj,bdi->bji", target.float().flatten(2), reference.float().flatten(2))
    return F.log_softmax(scores / temperature, dim=2)


@full_precision
def pointer_copy(reference: torch.Tensor, target: torch.Tensor, values: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    """The reference's ``values`` (B, K, h_r, w_r) (colours, one-hot labels, masks) copied to the target's positions
    through the pointer: ``y_j = sum_i A_ij v_i``, (B, K, h_t, w_t)."""
    weights = pointer_logits(reference, target, temperature).exp()
    copied = torch.einsum("bji,bki->bkj", weights, values.float().flatten(2))
    return copied.view(*copied.shape[:2], *target.shape[2:])


@full_precision
def pointer_colour_loss(reference: torch.Tensor, target: torch.Tensor, reference_colours: torch.Tensor,
                        target_colours: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``mean over target positions j of -log sum_{i: c_i = c_j} A_ij``: the cross-entropy between the copied
    distribution over the quantised colours and the target's colour ``c_j``.

    ``reference_colours`` (B, h_r, w_r) and ``target_colours`` (B, h_t, w_t) are colour indices (int64). A target
    position whose colour appears nowhere in its reference cannot be copied: it contributes 0 (and no gradient)
    but still counts in the mean over all B * h_t * w_t positions, so the normaliser does not depend on the data.
    Computed as a masked log-sum-exp of ``log A``, exact where a colour has tiny weights.
    """
    log_a = pointer_logits(reference, target, temperature)
    same = target_colours.flatten(1)[:, :, None] == reference_colours.flatten(1)[:, None, :]  # (B, J, I)
    found = same.any(2)
    picked = log_a.masked_fill(~same, float("-inf")).masked_fill(~found[:, :, None], 0.0)
    return -(torch.logsumexp(picked, dim=2) * found).mean()


def propagate_labels(features: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Labels of a clip's first frame carried through it by the pointer, as Vondrick et al. propagate segmentation
    masks and pose keypoints.

    ``features`` (B, T, D, h, w): every frame's embedding; ``labels`` (B, K, H, W) in [0, 1] for frame 0: masks,
    one-hot segments, keypoints as small discs. Returns (B, T, K, H, W): frame 0's labels as given, then for each
    frame t the labels copied at the feature map's resolution from frame 0 (its given labels, area-averaged) and
    frame t - 1 (its propagated ones) together, through the pointer of frame t's features into theirs, upsampled
    bilinearly.
    """
    b, length = features.shape[:2]
    first = F.interpolate(labels.float(), size=features.shape[-2:], mode="area")
    maps, last = [], first
    for t in range(1, length):
        last = pointer_copy(torch.cat([features[:, 0], features[:, t - 1]], -1), features[:, t],
                            torch.cat([first, last], -1), temperature)
        maps.append(last)
    if not maps:
        return labels.float()[:, None]
    up = F.interpolate(torch.stack(maps, 1).flatten(0, 1), size=labels.shape[-2:], mode="bilinear",
                       align_corners=False)
    return torch.cat([labels.float()[:, None], up.unflatten(0, (b, length - 1))], 1)
