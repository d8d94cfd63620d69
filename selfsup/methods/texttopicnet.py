"""TextTopicNet: predict the topics of an image's caption from its pixels (Gomez, Patel, Rusiñol, Karatzas, Jawahar,
"Self-supervised learning of visual features through embedding images into text topic spaces", CVPR 2017)."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.data.text import decode_texts
from selfsup.data.views import augmented, prepare
from selfsup.dynamics.topics import caption_topics
from selfsup.errors import UserError
from selfsup.losses.image_text import sigmoid_cross_entropy
from selfsup.losses.soft import soft_cross_entropy
from selfsup.methods.base import Batch, EpochContext, Method
from selfsup.methods.clip import require_text
from selfsup.methods.panels import Panel

LOSSES = {"softmax": soft_cross_entropy, "sigmoid": sigmoid_cross_entropy}


class TextTopicNet(Method):
    """Once, before the first step (on rank 0, then sent to every rank): every caption of the pretraining set (the
    ``text`` field) as a bag of words (the ``vocab_size`` most frequent words less English stop words), and latent
    Dirichlet allocation with ``num_topics`` topics (40, the paper's best on VOC; ``lda_iters`` passes from the fixed
    ``lda_seed``) gives each image its caption's topic distribution, kept as a buffer (the checkpoint holds it, so a
    resumed run trains on the same targets). Every step: one augmented view of every image (crops and flips; no colour
    changes, which captions may name) through the backbone and a linear head to ``num_topics`` logits, against the
    sample's distribution: ``loss="softmax"``, the cross-entropy with the distribution as a soft label, or
    ``"sigmoid"``, the paper's sigmoid cross-entropy of each topic's probability."""

    name = "texttopicnet"
    paper = ("Gomez et al., Self-supervised learning of visual features through embedding images into text topic "
             "spaces, CVPR 2017")
    needs_fields = ("text",)
    augment_defaults = {"jitter_p": 0.0, "gray_p": 0.0}

    def __init__(self, *args, num_topics: int = 40, vocab_size: int = 50_000, lda_iters: int = 10, lda_seed: int = 0,
                 loss: str = "softmax", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if num_topics < 2 or vocab_size < 1 or lda_iters < 1:
            raise UserError("texttopicnet: num_topics must be >= 2, vocab_size and lda_iters >= 1")
        if loss not in LOSSES:
            raise UserError(f"texttopicnet: loss must be one of {', '.join(LOSSES)} (got {loss!r})")
        self.num_topics, self.vocab_size, self.lda_iters, self.lda_seed = num_topics, vocab_size, lda_iters, lda_seed
        self.loss = LOSSES[loss]
        self.head = nn.Linear(self.feat_dim, num_topics)
        self.register_buffer("topics", torch.zeros(max(self.num_samples, 1), num_topics))
        self.register_buffer("fitted", torch.tensor(False))
        self.topic_words: list[list[str]] = []  # each topic's top words, for views (not kept in checkpoints)

    @torch.no_grad()
    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Fit the topics of every caption, once: a resumed run keeps the checkpoint's."""
        if bool(self.fitted):
            return
        text = require_text(ctx.fields, self.name)
        if len(text) != len(self.topics):
            raise ValueError(f"texttopicnet was built for {len(self.topics)} samples; the data has {len(text)}")
        topics, self.topic_words = ctx.on_main(lambda: caption_topics(decode_texts(text), self.num_topics,
                                                                      self.vocab_size, self.lda_iters, self.lda_seed))
        self.topics.copy_(topics)
        self.fitted.fill_(True)

    def _view(self, batch: Batch) -> torch.Tensor:
        """One augmented view of every image, float [0, 1]."""
        return augmented(batch.images, self.aug, self.image_size, batch.generator)

    def training_step(self, batch: Batch) -> torch.Tensor:
        logits = self.head(self.backbone(prepare(self._view(batch))))
        return self.loss(logits, self.topics[batch.indices])

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        top = self.topics[batch.indices].max(1)
        captions = [f"topic {k} {p:.0%}" + (f": {' '.join(self.topic_words[k][:2])}" if self.topic_words else "")
                    for p, k in zip(top.values.tolist(), top.indices.tolist())]
        return [Panel("the view and its target: its caption's topic distribution (the top topic, its words)",
                      self._view(batch), captions)]
