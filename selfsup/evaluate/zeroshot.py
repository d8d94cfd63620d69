"""Zero-shot classification with an image-text model (Radford et al., "Learning Transferable Visual Models From
Natural Language Supervision", ICML 2021, sec. 3.1.2): every class name becomes a caption ("a photo of a dog."), the
text encoder embeds it, and each image takes the class whose caption is the most cosine-similar to its embedding. No
labeled image is used."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from selfsup.errors import UserError


@torch.no_grad()
def zero_shot(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
              template: str = "a photo of a {}.", image_size: int | None = None, batch_size: int = 512) -> float:
    """Top-1 accuracy of zero-shot classification of uint8 ``images`` ``(N, 3, H, W)`` with int ``labels`` into
    ``class_names``, each turned into a prompt by ``template`` (``{}`` is the name); images at ``image_size`` (the
    model's training size by default), ``batch_size`` at a time. ``model`` embeds both into one space with
    ``embed_texts(list[str])`` and ``embed_images(uint8, image_size)`` (L2-normalised rows:
    :class:`selfsup.methods.clip.CLIP`); it runs in eval mode, and its mode is restored."""
    if "{}" not in template:
        raise UserError(f"the zero-shot template must contain '{{}}' where the class name goes (got {template!r})")
    if len(class_names) < 2:
        raise UserError(f"zero-shot classification needs at least 2 class names (got {len(class_names)})")
    if not len(images) or len(labels) != len(images) or not 0 <= int(labels.min()) <= int(labels.max()) < len(
            class_names):
        raise UserError(f"zero-shot needs images and one label per image in 0 .. {len(class_names) - 1}")
    was_training = model.training
    model.eval()
    try:
        prompts = model.embed_texts([template.format(name) for name in class_names])
        predicted = torch.cat([(model.embed_images(images[s : s + batch_size], image_size) @ prompts.T).argmax(1).cpu()
                               for s in range(0, len(images), batch_size)])
    finally:
        model.train(was_training)
    return float((predicted == labels.cpu()).float().mean())
