"""Linear probe on frozen features: standardise, then multinomial logistic regression by L-BFGS."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_linear(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-4,
               max_iter: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias minimising mean cross-entropy + weight_decay/2 * |W|^2 (full batch, L-BFGS)."""
    torch.manual_seed(0)
    w = torch.zeros(feats.shape[1], num_classes, dtype=feats.dtype, requires_grad=True)
    b = torch.zeros(num_classes, dtype=feats.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(feats @ w + b, labels) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def linear_top1(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                test_labels: torch.Tensor, weight_decay: float = 1e-4) -> float:
    """Test top-1 of a linear classifier trained on standardised frozen train features."""
    train_feats, test_feats = train_feats.float(), test_feats.float()
    mean, std = train_feats.mean(0), train_feats.std(0).clamp_min(1e-6)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    w, b = fit_linear((train_feats - mean) / std, train_labels, num_classes, weight_decay)
    pred = (((test_feats - mean) / std) @ w + b).argmax(1)
    return (pred == test_labels).float().mean().item()
