"""Losses of the image-text methods: CLIP's contrastive loss, where every image picks its own caption out of the
global batch's captions and every caption its own image (gathering the other ranks' embeddings with gradients, as
:func:`~selfsup.losses.nt_xent` does), and TextTopicNet's sigmoid cross-entropy against a caption's topics (its
softmax variant is :func:`~selfsup.losses.soft.soft_cross_entropy`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup.distributed import gather_with_grad, rank
from selfsup.losses.base import full_precision

MAX_LOGIT_SCALE = 100.0  # CLIP clips the learned logit scale at 100 (Radford et al., ICML 2021, sec. 2.5)


@full_precision
def clip_loss(image: torch.Tensor, text: torch.Tensor, log_scale: torch.Tensor,
              max_scale: float = MAX_LOGIT_SCALE) -> torch.Tensor:
    """CLIP's symmetric InfoNCE (Radford et al., "Learning Transferable Visual Models From Natural Language
    Supervision", ICML 2021, fig. 3): with L2-normalised embeddings and the learned scale
    s = min(exp(log_scale), max_scale) (the inverse temperature), logits = s * I T^T over the N images and N captions
    of the global batch; the loss is the mean of the cross-entropy of each image against its own caption (rows) and of
    each caption against its own image (columns). ``image[i]`` and ``text[i]`` belong together. Under
    torch.distributed each rank returns its samples' share (DDP's gradient averaging makes it the global mean)."""
    i, t = F.normalize(image.float(), dim=1), F.normalize(text.float(), dim=1)
    scale = log_scale.float().clamp(max=math.log(max_scale)).exp()
    own = torch.arange(i.shape[0], device=i.device) + rank() * i.shape[0]
    per_image = F.cross_entropy(scale * i @ gather_with_grad(t).T, own)
    per_text = F.cross_entropy(scale * t @ gather_with_grad(i).T, own)
    return (per_image + per_text) / 2


@full_precision
def sigmoid_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """TextTopicNet's loss (Gomez et al., CVPR 2017; Caffe's SigmoidCrossEntropyLoss): every one of the K outputs is a
    Bernoulli prediction of its target probability, -sum_k [y_k log sigmoid(x_k) + (1 - y_k) log(1 - sigmoid(x_k))],
    averaged over the samples; no gradient flows into the targets ``(B, K)``."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.detach().float(), reduction="none").sum(1).mean()
