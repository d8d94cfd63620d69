"""JULE: agglomerative clustering in the forward pass, a weighted triplet loss on its clusters in the backward pass
(Yang, Parikh, Batra, "Joint Unsupervised Learning of Deep Representations and Image Clusters", CVPR 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.views import augmented, eval_view, prepare
from selfsup.dynamics.agglomerative import agglomerate, initial_clusters, knn_graph, unrolled_steps
from selfsup.errors import UserError
from selfsup.losses.clustering import weighted_triplet_loss
from selfsup.methods.base import Batch, EpochContext, Method
from selfsup.methods.panels import Panel


class JULE(Method):
    """A linear head on the backbone gives ``proj_dim``-d L2-normalised embeddings. Every ``period`` epochs, a period
    of the recurrent process: the embeddings of every training image (evaluation transform, batch norm in eval mode),
    their ``knn``-nearest-neighbour graph and, on rank 0, ceil(``eta`` * clusters) merges of the current clusters by
    the paper's criterion (``kc`` nearest clusters, ``lam``; :mod:`selfsup.dynamics.agglomerative`), never below
    ``clusters``. The first period only makes the initial clusters (each image with its nearest neighbour: a few
    images each), which the first epochs train on, as the authors' code does; once at ``clusters`` nothing is merged any
    more and training goes on with those clusters. The cluster ids are a buffer: a resumed run goes on merging them.

    Each step: one view of every image (no augmentation by default, as the paper) and the weighted triplet loss
    (:func:`~selfsup.losses.clustering.weighted_triplet_loss`) over the global batch: two images of one cluster
    are an anchor and a positive, ``negatives`` images of other clusters its negatives, the positive term weighted
    by ``gamma``, margin ``margin``. ``clusters`` defaults to 10x the classes where the data has labels (as
    DeepCluster; the paper stops at the number of classes), else 100. Batches are drawn uniformly, as the paper's:
    while the clusters are small, few pairs of a cluster meet in a batch (batch x (cluster size - 1) / N positives
    per image).
    """

    name = "jule"
    paper = "Yang, Parikh & Batra, Joint Unsupervised Learning of Deep Representations and Image Clusters, CVPR 2016"
    base_lr = 0.01  # the authors' code: SGD lr 0.01 (at batch 100; here per 256), momentum 0.9, weight decay 5e-5
    weight_decay = 5e-5
    augment_defaults = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "flip_p": 0.0, "jitter_p": 0.0,
                        "gray_p": 0.0}

    def __init__(self, *args, clusters: int | None = None, period: int = 1, eta: float = 0.9, knn: int = 20,
                 kc: int = 5, lam: float = 1.0, gamma: float = 2.0, margin: float = 0.2, negatives: int = 20,
                 proj_dim: int = 160, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.target = clusters or (10 * self.num_classes if self.num_classes else 100)
        if self.num_samples and self.target > self.num_samples:
            raise UserError(f"jule: {self.target} clusters is more than the {self.num_samples} images of the data "
                            "set; choose clusters <= the number of images")
        if period < 1 or not 0 < eta <= 1 or knn < 1 or kc < 1 or lam < 0 or negatives < 0 or proj_dim < 1:
            raise UserError("jule: period, knn, kc and proj_dim must be >= 1, eta in (0, 1], lam and negatives >= 0")
        self.period, self.eta, self.knn, self.kc, self.lam = period, eta, knn, kc, lam
        self.gamma, self.margin, self.negatives = gamma, margin, negatives
        self.head = nn.Linear(self.feat_dim, proj_dim)
        self.register_buffer("clusters", torch.zeros(max(self.num_samples, 1), dtype=torch.long))
        self.register_buffer("periods", torch.zeros((), dtype=torch.long))  # clustering passes done

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings of normalised images."""
        return F.normalize(self.head(self.backbone(x)).float(), dim=1)

    @torch.no_grad()
    def on_epoch_start(self, ctx: EpochContext) -> None:
        """A period's clustering: the initial clusters at the first, then ceil(eta * clusters) merges."""
        first, count = int(self.periods) == 0, int(self.clusters.max()) + 1
        if ctx.epoch % self.period or (not first and count <= self.target):
            return
        was_training = self.training
        self.eval()
        try:
            feats = ctx.extract(lambda x: self.embed(eval_view(x, self.image_size)))
        finally:
            self.train(was_training)
        if not bool(torch.isfinite(feats).all()):
            raise UserError("jule: the embeddings turned NaN/inf; lower the learning rate")
        device = self.clusters.device

        def cluster() -> torch.Tensor:
            graph = knn_graph(feats.to(device), self.knn)
            if first:
                return initial_clusters(graph)
            steps = unrolled_steps(count, self.target, self.eta)
            return agglomerate(feats, self.clusters.cpu(), steps, self.target, kc=self.kc, lam=self.lam,
                               graph=graph)[0]

        self.clusters.copy_(ctx.on_main(cluster))
        self.periods.add_(1)

    def _views(self, batch: Batch) -> torch.Tensor:
        return augmented(batch.images, self.aug, self.image_size, batch.generator)

    def training_step(self, batch: Batch) -> torch.Tensor:
        z = self.embed(prepare(self._views(batch)))
        return weighted_triplet_loss(z, self.clusters[batch.indices], self.gamma, self.margin, self.negatives,
                                     batch.generator)

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        count = int(self.clusters.max()) + 1
        return [Panel(f"the view and its cluster (agglomerative, {count} clusters after {int(self.periods)} periods; "
                      "a cluster's images are each other's positives)", self._views(batch),
                      [f"cluster {c}" for c in self.clusters[batch.indices].tolist()])]
