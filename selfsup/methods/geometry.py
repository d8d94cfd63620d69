"""What the panels of dense geometric targets draw (the synthetic multi-task pretext of Ren & Lee, "Cross-Domain
Self-supervised Multi-task Feature Learning using Synthetic Imagery", CVPR 2018): depth, surface normals and contours
as pictures in [0, 1], and each prediction under its target with the image's error."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.methods.panels import Panel


def geometry_pictures(maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps as pictures in [0, 1]: depth (clamped), normals as (n + 1) / 2 of the unit normal, contour
    probabilities (of logits) or 0/1 targets."""
    return {"depth": maps["depth"].float().clamp(0.0, 1.0),
            "normals": (F.normalize(maps["normals"].float(), dim=1, eps=1e-8) + 1.0) / 2.0,
            "contours": maps["contours"].float()}


def mean_angle_captions(predicted: torch.Tensor, target: torch.Tensor) -> list[str]:
    """Every image's mean angle in degrees between predicted and target unit normals ``(B, 3, H, W)``."""
    cos = (predicted * target).sum(1).clamp(-1.0, 1.0)
    return [f"error {v:.0f} deg" for v in torch.rad2deg(cos.acos()).flatten(1).mean(1).tolist()]


def prediction_rows(raw: dict[str, torch.Tensor], targets: dict[str, torch.Tensor] | None) -> list[Panel]:
    """Rows of the decoders' raw outputs (depth, normals, contour logits) as pictures (contour probabilities), each
    under its target where ``targets`` are given, captioned by the image's depth error and mean normal angle."""
    predicted = geometry_pictures({**raw, "contours": torch.sigmoid(raw["contours"].float())})
    if targets is None:
        return [Panel(f"predicted {k}", v) for k, v in predicted.items()]
    captions = {"depth": [f"error {v:.3f}" for v in (predicted["depth"] - targets["depth"]).abs().flatten(1)
                          .mean(1).tolist()],
                "normals": mean_angle_captions(predicted["normals"] * 2.0 - 1.0, targets["normals"]),
                "contours": None}
    return [row for k, shown in geometry_pictures(targets).items()
            for row in (Panel(f"target {k}", shown), Panel(f"predicted {k}", predicted[k], captions[k]))]
