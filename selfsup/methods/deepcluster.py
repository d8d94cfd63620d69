"""DeepCluster: cluster the features of the whole set every epoch and train on the clusters as pseudo-labels
(Caron, Bojanowski, Joulin, Douze, "Deep Clustering for Unsupervised Learning of Visual Features", ECCV 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.views import augmented, augmented_views, eval_view
from selfsup.dynamics.kmeans import cluster_balanced_weights, kmeans, preprocess_features
from selfsup.errors import UserError
from selfsup.methods.base import Batch, EpochContext, Method
from selfsup.methods.panels import Panel


class DeepCluster(Method):
    """Every epoch: the backbone's features of every training image (evaluation transform, batch norm in eval
    mode), PCA to ``pca_dim`` with whitening and L2 normalisation, k-means with ``num_clusters`` clusters (20
    Lloyd iterations; empty clusters are re-seeded by splitting a large one), the cluster indices as
    pseudo-labels, a freshly initialised linear classifier (its optimiser state forgotten) and an epoch order
    drawn uniformly over the clusters, so that big clusters do not dominate. ``num_clusters`` defaults to 10x
    the classes where the data has labels (k = 10 is reported to collapse on CIFAR-10, deepcluster issue 22;
    the paper over-clusters ImageNet's 1,000 classes into 10,000), else 100.
    """

    name = "deepcluster"
    paper = "Caron et al., Deep Clustering for Unsupervised Learning of Visual Features, ECCV 2018"
    base_lr = 0.05  # the paper's SGD: lr 0.05, momentum 0.9, weight decay 1e-5
    weight_decay = 1e-5
    augment_defaults = {"jitter_p": 0.0, "gray_p": 0.0}  # the paper: random resized crops and flips

    def __init__(self, *args, num_clusters: int | None = None, pca_dim: int = 256, kmeans_iters: int = 20,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_clusters = num_clusters or (10 * self.num_classes if self.num_classes else 100)
        if self.num_samples and self.num_clusters > self.num_samples:
            raise UserError(f"deepcluster: {self.num_clusters} clusters is more than the {self.num_samples} images "
                            "of the data set; choose num_clusters <= the number of images")
        if self.num_clusters < 2 or pca_dim < 1 or kmeans_iters < 1:
            raise UserError("deepcluster: num_clusters must be >= 2, pca_dim and kmeans_iters >= 1")
        self.pca_dim, self.kmeans_iters = pca_dim, kmeans_iters
        self.classifier = nn.Linear(self.feat_dim, self.num_clusters)
        self.register_buffer("pseudo_labels", torch.zeros(max(self.num_samples, 1), dtype=torch.long))

    @torch.no_grad()
    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Re-cluster the whole set: pseudo-labels, a new classifier and the epoch's sampling weights."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            feats = ctx.extract(lambda x: self.backbone(eval_view(x, self.image_size)))
        finally:
            self.backbone.train(was_training)
        if not bool(torch.isfinite(feats).all()):
            raise UserError("deepcluster: the features turned NaN/inf; lower the learning rate")
        seed = int(torch.randint(2**62, (), generator=ctx.generator))  # drawn on every rank: they stay in step
        labels = ctx.on_main(lambda: kmeans(preprocess_features(feats, self.pca_dim), self.num_clusters,
                                            self.kmeans_iters, generator=torch.Generator().manual_seed(seed),
                                            use_faiss=False)[1])
        self.pseudo_labels.copy_(labels)
        self.classifier.weight.copy_(torch.randn(self.classifier.weight.shape, generator=ctx.generator) * 0.01)
        self.classifier.bias.zero_()  # the paper's top layer: N(0, 0.01) weights, zero bias, every epoch
        ctx.reset_optimizer_state(self.classifier)
        ctx.set_sampling_weights(cluster_balanced_weights(labels, self.num_clusters))

    def training_step(self, batch: Batch) -> torch.Tensor:
        x = augmented_views(batch.images, self.aug, self.image_size, batch.generator, n=1)
        logits = self.classifier(self.backbone(x)).float()
        return F.cross_entropy(logits, self.pseudo_labels[batch.indices])

    @torch.no_grad()
    def views(self, batch: Batch) -> list[Panel]:
        x = augmented(batch.images, self.aug, self.image_size, batch.generator)
        clusters = self.pseudo_labels[batch.indices].tolist()
        return [Panel("the view and its pseudo-label (its k-means cluster this epoch)", x,
                      [f"cluster {c}" for c in clusters])]
