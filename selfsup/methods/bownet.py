"""BoWNet: predict the bag of visual words of an image, computed by a teacher network, from a perturbed view of
it (Gidaris, Bursuc, Komodakis, Pérez, Cord, "Learning Representations by Predicting Bags of Visual Words",
CVPR 2020)."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.data.ops.base import resize
from selfsup.data.ops.cutmix import cutmix, kept_fraction, partners, sample_cutmix
from selfsup.data.views import augmented, eval_view, for_this_rank, prepare
from selfsup.dynamics.bow import POOLS, mean_nearest_distance, soft_bow
from selfsup.dynamics.kmeans import kmeans
from selfsup.errors import UserError
from selfsup.heads.cosine import CosineClassifier
from selfsup.losses.soft import soft_cross_entropy
from selfsup.methods.base import Batch, EpochContext, Method
from selfsup.methods.panels import Panel, bars
from selfsup.methods.teacher import load_teacher


class BoWNet(Method):
    """A frozen ``teacher`` (a run folder or checkpoint of this project, e.g. a RotNet; its evaluated encoder is kept
    as a submodule, batch norm frozen in eval mode, so checkpoints hold it and resume exactly) describes every image by
    its feature map at ``stage`` (default: the teacher's penultimate stage, as the paper's conv4), resized to the
    teacher's own training size. Before the first step, ``locations`` feature vectors drawn uniformly per training
    image are clustered by k-means (``kmeans_iters`` Lloyd iterations) into a vocabulary of ``num_words`` visual
    words, saved as a buffer with the mean squared distance of a feature to its nearest word, ``d``.

    Target of an image: every location's soft assignment ``softmax_k(-inv_delta / d * |f_u - v_k|^2)`` over the
    words (the teacher sees the unperturbed image), pooled over the map (``pool``: "avg", the histogram; "max",
    which words occur) and L1-normalised: a distribution over the words. Input of the student: a perturbed view, the
    augmentation recipe (crops of 20-100% of the image, flips, colour jitter, grayscale: the paper's perturbations)
    then CutMix with the image's neighbour in the batch for a fraction ``cutmix_p`` of the images, whose target
    becomes the mixture of the two images' targets by the area each keeps. The student's pooled features go through
    a cosine classifier with a learnable scale (init ``scale``) over the words; the loss is the cross-entropy
    against the target distribution. The relative temperature ``inv_delta`` = 15 is the default of the authors'
    follow-up OBoW (Gidaris et al., CVPR 2021).
    """

    name = "bownet"
    paper = ("Gidaris, Bursuc, Komodakis, Pérez, Cord, Learning Representations by Predicting Bags of Visual Words, "
             "CVPR 2020")
    augment_defaults = {"crop_scale": (0.2, 1.0)}

    def __init__(self, *args, teacher: str | None = None, stage: str | None = None, num_words: int = 2048,
                 locations: int = 8, kmeans_iters: int = 20, inv_delta: float = 15.0, pool: str = "avg",
                 cutmix_p: float = 0.5, scale: float = 10.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if teacher is None:
            raise UserError("bownet needs a teacher: --method-arg teacher=RUN_FOLDER (e.g. a rotnet run)")
        if pool not in POOLS or num_words < 2 or locations < 1 or kmeans_iters < 1 or inv_delta <= 0:
            raise UserError(f"bownet: pool must be one of {', '.join(POOLS)}, num_words >= 2, locations and "
                            "kmeans_iters >= 1, inv_delta > 0")
        if not 0.0 <= cutmix_p <= 1.0:
            raise UserError(f"bownet: cutmix_p must lie in [0, 1], got {cutmix_p}")
        self.teacher, self.teacher_size = load_teacher(teacher)
        names = list(getattr(self.teacher, "stage_names", ["output"]))
        stage = stage or names[max(0, len(names) - 2)]
        if stage not in names:
            raise UserError(f"bownet: the teacher has no stage '{stage}'; its stages: {', '.join(names)}")
        self.stage = names.index(stage)
        self.num_words, self.locations, self.kmeans_iters = num_words, locations, kmeans_iters
        self.inv_delta, self.pool, self.cutmix_p = inv_delta, pool, cutmix_p
        channels = self._teacher_map(torch.zeros(1, 3, self.teacher_size, self.teacher_size, dtype=torch.uint8))
        self.register_buffer("vocabulary", torch.zeros(num_words, channels.shape[1]))
        self.register_buffer("nearest_distance", torch.ones(()))  # d, set with the vocabulary
        self.head = CosineClassifier(self.feat_dim, num_words, scale)

    def train(self, mode: bool = True) -> BoWNet:
        """Train mode for the student; the teacher stays in eval mode (its batch-norm statistics are frozen)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def parameters_of(self, optimizer: str) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("teacher.")]

    @torch.no_grad()
    def _teacher_map(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's feature map at ``stage`` of uint8 images, unperturbed (resized to its size)."""
        return self.teacher.forward_stages(eval_view(images, self.teacher_size))[self.stage].float()

    @torch.no_grad()
    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Before the first step: the vocabulary, by k-means over ``locations`` random teacher features per image.
        Every rank passes over the whole set in the same chunks (so the draws follow the images in order), and
        rank 0 clusters."""
        if ctx.epoch > 0:
            return
        where = torch.rand(ctx.num_samples, self.locations, generator=ctx.generator, dtype=torch.float64)
        done = 0

        def sample(x: torch.Tensor) -> torch.Tensor:
            nonlocal done
            fmap = self._teacher_map(x).flatten(2)  # (b, C, h * w)
            picks = (where[done : done + len(x)] * fmap.shape[2]).long().to(fmap.device)
            done += len(x)
            return fmap.gather(2, picks.unsqueeze(1).expand(-1, fmap.shape[1], -1)).transpose(1, 2).flatten(1)

        feats = ctx.extract(sample, sharded=False).view(-1, self.vocabulary.shape[1])
        if len(feats) < self.num_words:
            raise UserError(f"bownet: {len(feats)} sampled features cannot make {self.num_words} visual words; "
                            "lower num_words or raise locations")
        seed = int(torch.randint(2**62, (), generator=ctx.generator))  # drawn on every rank: they stay in step

        def cluster() -> tuple[torch.Tensor, torch.Tensor]:
            words = kmeans(feats, self.num_words, self.kmeans_iters, torch.Generator().manual_seed(seed),
                           use_faiss=False)[0]
            return words, mean_nearest_distance(feats, words).float()

        words, distance = ctx.on_main(cluster)
        self.vocabulary.copy_(words)
        self.nearest_distance.copy_(distance)

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """The bag-of-words distributions ``(B, num_words)`` of uint8 images, as the teacher sees them."""
        return soft_bow(self._teacher_map(images), self.vocabulary, self.inv_delta / self.nearest_distance,
                        self.pool)

    def _inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The perturbed views (float [0, 1]), their targets and the fraction each keeps of its own image."""
        x = augmented(batch.images, self.aug, self.image_size, batch.generator)
        size = self.image_size
        boxes = for_this_rank(lambda n: sample_cutmix(n, size, size, self.cutmix_p, batch.generator, x.device), len(x))
        partner = partners(len(x), x.device)
        lam = kept_fraction(boxes, size, size).unsqueeze(1)
        own = self.targets(batch.images)
        return cutmix(x, x[partner], boxes), lam * own + (1.0 - lam) * own[partner], lam.squeeze(1)

    def training_step(self, batch: Batch) -> torch.Tensor:
        x, target, _ = self._inputs(batch)
        return soft_cross_entropy(self.head(self.backbone(prepare(x))), target)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        x, target, lam = self._inputs(batch)
        top = target.topk(min(3, self.num_words), dim=1)
        words = [", ".join(f"w{k} {v:.2f}" for k, v in zip(i.tolist(), p.tolist(), strict=True))
                 for p, i in zip(top.values, top.indices, strict=True)]
        mixed = [f"CutMix, keeps {f:.0%}" if f < 1 else "" for f in lam.tolist()]
        return [Panel("what the teacher sees: the unperturbed image", resize(batch.images, self.teacher_size)),
                Panel("what the student sees: the perturbed view", x, mixed),
                Panel("what it must predict: the bag of visual words (top words)", bars(target), words)]

