"""Fine-tuning: the whole network with a new linear head, trained on labels (the seeds' dataset-generalisation and
semi-supervised protocols: Doersch, Gupta, Efros, "Unsupervised Visual Representation Learning by Context
Prediction", ICCV 2015, pretrained vs from scratch; Chen et al., "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020, section 4.2: fine-tuning on 1% / 10% of the labels)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.augment import AugmentConfig
from selfsup.data.sources import ImageSet
from selfsup.data.views import augmented, eval_view, prepare
from selfsup.errors import UserError

#: random resized crop of at least half the image and a horizontal flip, no colour changes (small images: CIFAR,
#: STL; ImageNet fine-tuning usually crops from 8% of the image, pass your own AugmentConfig for that)
FINETUNE_AUGMENT = dict(crop_scale=(0.5, 1.0), flip_p=0.5, jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)


def finetune_augment(**overrides) -> AugmentConfig:
    """The fine-tuning augmentation (:data:`FINETUNE_AUGMENT`), with ``overrides`` (e.g. ``flip_p=0`` for digits)."""
    return AugmentConfig(**{**FINETUNE_AUGMENT, **overrides})


def _check(train: ImageSet, test: ImageSet, epochs: int, batch_size: int, lr: float, backbone_lr: float) -> None:
    if not (train.labeled and test.labeled):
        raise UserError("fine-tuning needs labeled train and test images")
    if train.streamed or test.streamed:
        raise UserError("fine-tuning needs the images in memory (not streamed)")
    check_schedule("fine-tuning", len(train), epochs, batch_size, lr, backbone_lr)


def check_schedule(what: str, n: int, epochs: int, batch_size: int, lr: float, backbone_lr: float) -> None:
    """One-line errors for a fine-tuning schedule (``what``: whose) that cannot run on ``n`` train images."""
    if n < 2 or epochs < 1 or batch_size < 1:
        raise UserError(f"{what} needs at least 2 train images and a positive number of epochs and batch size "
                        f"(got {n}, {epochs} and {batch_size})")
    if not lr > 0 or not backbone_lr >= 0:
        raise UserError(f"the head's lr must be positive and the backbone's at least 0 (got {lr:g} and "
                        f"{backbone_lr:g})")


def head(dim: int, num_classes: int) -> nn.Sequential:
    """A batch norm without affine parameters, then a zero-initialised linear classifier: the features are
    standardised (per batch in training, by running statistics in evaluation), so that features of any scale (a
    random init's 0.01 or a trained network's 10) train at the same rates (He et al., "Masked Autoencoders Are
    Scalable Vision Learners", CVPR 2022, its linear probing recipe, after MoCo v3, Chen, Xie, He, ICCV 2021)."""
    linear = nn.Linear(dim, num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False), linear)


@torch.no_grad()
def _top1(net: nn.Module, classifier: nn.Module, test: ImageSet, size: int, device: torch.device,
          batch_size: int = 512) -> float:
    """Test top-1 of ``classifier(net(x))`` with the evaluation transform, both in eval mode."""
    net.eval()
    classifier.eval()
    correct = torch.zeros((), device=device)
    for start in range(0, len(test), batch_size):
        x = eval_view(test.images[start : start + batch_size].to(device, non_blocking=True), size)
        y = test.labels[start : start + batch_size].to(device, non_blocking=True)
        correct += (classifier(net(x)).argmax(1) == y).sum()
    return correct.item() / len(test)


def finetune(encoder: nn.Module, train: ImageSet, test: ImageSet, *, epochs: int = 30, batch_size: int = 256,
             lr: float = 0.05, backbone_lr: float | None = None, weight_decay: float = 5e-4,
             augment: bool | AugmentConfig = True, image_size: int | None = None,
             device: str | torch.device | None = None, seed: int = 0,
             progress: Callable[[str], None] | None = None) -> dict:
    """Fine-tune a copy of ``encoder`` (the caller's is untouched) with a new linear head on ``train`` and return
    ``{"top1": final test top-1, "curve": [test top-1 after every epoch]}``.

    The head is :func:`head`: a zero-initialised linear layer on the features standardised by a batch norm.
    SGD with momentum 0.9 and ``weight_decay`` on every parameter, the rate decayed by a cosine from its peak to 0
    over all steps: ``lr`` for the head, ``backbone_lr`` for the encoder (default ``lr / 10``). ``backbone_lr=0``
    freezes the encoder (its batch norm in eval mode): a linear probe trained by the same SGD. Every epoch, a
    permutation from a generator seeded with ``seed`` is cut into ``max(1, N // batch_size)`` near-equal batches
    (each of at least ``batch_size`` images, or all); with ``augment`` (True: :data:`FINETUNE_AUGMENT`, or an
    :class:`AugmentConfig`) each uint8 batch is augmented on ``device`` by the batched ops (parameters from the
    same generator), else only resized. Images are resized to the size the encoder was trained at (or
    ``image_size``). ``progress`` gets a line per epoch.
    """
    from selfsup.evaluate import trained_size

    backbone_lr = lr / 10 if backbone_lr is None else backbone_lr
    _check(train, test, epochs, batch_size, lr, backbone_lr)
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    size = image_size or trained_size(encoder) or int(train.images.shape[-1])
    aug = (finetune_augment() if augment is True else augment) or None
    frozen = backbone_lr == 0
    net = copy.deepcopy(encoder).to(device).requires_grad_(not frozen)
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    with torch.no_grad():
        dim = net.eval()(eval_view(train.images[:2].to(device), size)).shape[1]
    classifier = head(dim, num_classes).to(device)
    groups = [dict(params=list(classifier.parameters()), peak=lr)]
    if not frozen:
        groups.append(dict(params=list(net.parameters()), peak=backbone_lr))
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    n_batches = max(1, len(train) // batch_size)
    total, step, curve = epochs * n_batches, 0, []
    for epoch in range(epochs):
        net.train(not frozen)
        classifier.train()
        loss_sum = torch.zeros((), device=device)
        for idx in torch.randperm(len(train), generator=generator).tensor_split(n_batches):
            images = train.images[idx].to(device, non_blocking=True)
            x = prepare(augmented(images, aug, size, generator)) if aug else eval_view(images, size)
            with torch.set_grad_enabled(not frozen):
                feats = net(x)
            loss = F.cross_entropy(classifier(feats), train.labels[idx].to(device, non_blocking=True))
            for g in opt.param_groups:
                g["lr"] = g["peak"] * 0.5 * (1 + math.cos(math.pi * step / total))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
            step += 1
        curve.append(_top1(net, classifier, test, size, device))
        if progress:
            progress(f"epoch {epoch + 1}/{epochs}: train loss {loss_sum.item() / len(train):.3f}, test top-1 "
                     f"{curve[-1] * 100:.1f}%")
    return {"top1": curve[-1], "curve": curve}
