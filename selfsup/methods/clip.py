"""CLIP: contrastive pretraining of an image encoder and a text encoder on images with captions (Radford et al.,
"Learning Transferable Visual Models From Natural Language Supervision", ICML 2021)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.sources import Dataset
from selfsup.data.text import TEXT_LENGTH, decode_texts, encode_texts
from selfsup.data.views import augmented, eval_view, prepare
from selfsup.errors import UserError
from selfsup.heads.text import ByteTextEncoder
from selfsup.losses.image_text import MAX_LOGIT_SCALE, clip_loss
from selfsup.methods.base import Batch, EpochContext, Method
from selfsup.methods.panels import Panel

#: what to say when the data has no captions (the ``text`` field)
CAPTIONED_DATA = ("the `scenes` data, a folder where each image has a caption beside it (photo.jpg + photo.txt), or "
                  "an ImageSet with fields['text'] (selfsup.data.text.encode_texts)")


def require_text(fields: dict[str, torch.Tensor], method: str) -> torch.Tensor:
    """The ``text`` field, or a one-line UserError naming the data that has captions."""
    if "text" not in fields:
        raise UserError(f"{method} trains on images with captions and this data has none; use {CAPTIONED_DATA}")
    return fields["text"]


class CLIP(Method):
    """One augmented view of every image (a random square crop of 80-100% of it: CLIP's only augmentation; no
    flips or colour changes, which captions may name) goes through the backbone and a linear projection; its caption
    (the ``text`` field) through a small byte-level transformer (:class:`~selfsup.heads.text.ByteTextEncoder`, in place
    of the paper's BPE transformer) and a linear projection, both to ``embed_dim``. The symmetric InfoNCE of
    :func:`~selfsup.losses.image_text.clip_loss` makes every image pick its caption out of the global batch's
    captions and every caption its image, at a learned temperature: the logit scale is log-parameterised, starts at
    1 / ``temperature`` (0.07, the paper's) and is clipped at 100. AdamW with the paper's betas (0.9, 0.98), decoupled
    weight decay 0.2 and rate 5e-4 (the paper's rate at its batch of 32,768; kept, not scaled down, at batch 256).
    Evaluation uses the backbone, before the projection; :meth:`embed_images` / :meth:`embed_texts` give the joint
    space that :func:`selfsup.evaluate.zeroshot.zero_shot` classifies in, and :meth:`report` adds the zero-shot
    top-1 on the test split (prompts ``"a photo of a {class}."``) to the run's metrics."""

    name = "clip"
    paper = "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021"
    needs_fields = ("text",)
    optimizer, base_lr, weight_decay = "adamw", 5e-4, 0.2
    optimizer_defaults = {"main": {"betas": (0.9, 0.98)}}
    augment_defaults = {"crop_scale": (0.8, 1.0), "crop_ratio": (1.0, 1.0), "flip_p": 0.0, "jitter_p": 0.0,
                        "gray_p": 0.0}

    def __init__(self, *args, embed_dim: int = 128, text_width: int = 128, text_layers: int = 2, text_heads: int = 4,
                 text_length: int = TEXT_LENGTH, temperature: float = 0.07, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if min(embed_dim, text_width, text_layers, text_heads, text_length) < 1 or text_width % text_heads:
            raise UserError("clip: embed_dim, text_width, text_layers, text_heads and text_length must be >= 1, and "
                            "text_width a multiple of text_heads")
        if not 1 / MAX_LOGIT_SCALE <= temperature <= 1:
            raise UserError(f"clip: temperature must be between {1 / MAX_LOGIT_SCALE} and 1 (got {temperature})")
        self.text_length = text_length
        self.text_encoder = ByteTextEncoder(text_width, text_layers, text_heads, text_length)
        self.image_projection = nn.Linear(self.feat_dim, embed_dim, bias=False)
        self.text_projection = nn.Linear(text_width, embed_dim, bias=False)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))

    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Refuse data without captions (or with longer ones than ``text_length``) before the first step."""
        if not ctx.streamed:
            self._check_text(require_text(ctx.fields, self.name))

    def _check_text(self, text: torch.Tensor) -> torch.Tensor:
        if text.shape[1] > self.text_length:
            raise UserError(f"clip: the captions are {text.shape[1]} bytes long; set the option text_length to at "
                            f"least that (it is {self.text_length})")
        return text

    def _inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One augmented view of every image (float [0, 1]) and its caption's bytes."""
        text = self._check_text(require_text(batch.fields, self.name))
        return augmented(batch.images, self.aug, self.image_size, batch.generator), text

    def training_step(self, batch: Batch) -> torch.Tensor:
        x, text = self._inputs(batch)
        image = self.image_projection(self.backbone(prepare(x)))
        return clip_loss(image, self.text_projection(self.text_encoder(text)), self.log_scale)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        self.log_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))  # the paper's clip at 100, on the parameter itself

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        x, text = self._inputs(batch)
        return [Panel("the view and its caption (it must pick it out of the batch's captions)", x, decode_texts(text))]

    def embed_images(self, images: torch.Tensor, image_size: int | None = None) -> torch.Tensor:
        """uint8 images ``(B, 3, H, W)`` -> L2-normalised joint embeddings ``(B, embed_dim)`` (the evaluation
        transform at ``image_size``, default the training size; the model's mode as it is)."""
        device = self.log_scale.device
        x = eval_view(images.to(device), image_size or self.image_size)
        return F.normalize(self.image_projection(self.backbone(x)).float(), dim=1)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Captions -> L2-normalised joint embeddings ``(len(texts), embed_dim)``."""
        rows = encode_texts(texts, self.text_length).to(self.log_scale.device)
        return F.normalize(self.text_projection(self.text_encoder(rows)).float(), dim=1)

    def report(self, out: Path, data: Dataset) -> dict[str, float]:
        """The zero-shot top-1 on the test split, when it has labels, class names and images in memory."""
        from selfsup.evaluate.zeroshot import zero_shot

        test = data.test
        if test is None or not test.labeled or not test.classes or test.streamed:
            return {}
        return {"zero_shot_top1": zero_shot(self, test.images, test.labels, test.classes, image_size=self.image_size)}
