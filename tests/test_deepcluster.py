"""DeepCluster: the per-epoch re-clustering against a reference, resume across it, and 2 processes vs 1."""

import pytest
import torch

import selfsup
from selfsup.backbones import build_backbone
from selfsup.config import TrainConfig
from selfsup.data import load_data
from selfsup.data.views import eval_view
from selfsup.dynamics.kmeans import kmeans, preprocess_features
from selfsup.engine.epoch import Epoch
from selfsup.errors import UserError
from selfsup.methods.deepcluster import DeepCluster
from tests.helpers import assert_same_state, assert_two_ranks_train_like_one

DIGITS = load_data("digits")


def cfg(**kw):
    base = dict(method="deepcluster", data="digits", batch_size=64, image_size=8, steps=30, log_every=5, lr=0.05,
                method_args=dict(num_clusters=20, pca_dim=16))
    return TrainConfig(**{**base, **kw})


def test_epoch_start_clusters_whitened_features_reinitialises_the_classifier_and_balances_the_clusters():
    torch.manual_seed(0)
    images = DIGITS.pretrain.images
    method = DeepCluster(build_backbone("small"), 256, 8, num_clusters=20, pca_dim=16, num_samples=len(images))
    opt = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    method.classifier(method.backbone(torch.randn(4, 3, 8, 8))).sum().backward()
    opt.step()  # the classifier has momentum state to forget
    ctx = Epoch(3, images, method, {"main": opt}, torch.device("cpu"), seed=5)
    method.on_epoch_start(ctx)

    # reference: eval-mode features of every image, PCA-whitened, L2-normalised, k-means with the epoch's seed
    method.backbone.eval()
    with torch.no_grad():
        feats = method.backbone(eval_view(images, 8))
    method.backbone.train()
    seed = int(torch.randint(2**62, (), generator=Epoch(3, images, method, {}, torch.device("cpu"), seed=5).generator))
    _, expected = kmeans(preprocess_features(feats, 16), 20, 20, generator=torch.Generator().manual_seed(seed),
                         use_faiss=False)
    assert torch.equal(method.pseudo_labels, expected)
    w = method.classifier.weight.detach()
    assert method.classifier.bias.detach().abs().max() == 0 and abs(float(w.std()) - 0.01) < 0.002
    assert all(p not in opt.state for p in method.classifier.parameters())
    assert method.backbone.blocks[0][0].weight in opt.state  # the rest of the model keeps its momentum
    per_cluster = torch.zeros(20, dtype=torch.float64).index_add_(0, expected, ctx.weights)
    nonempty = torch.bincount(expected, minlength=20) > 0
    torch.testing.assert_close(per_cluster[nonempty], torch.full((int(nonempty.sum()),), 1 / int(nonempty.sum()),
                                                                 dtype=torch.float64))


def test_more_clusters_than_images_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="2000 clusters is more than the 1347 images"):
        selfsup.train(cfg(method_args=dict(num_clusters=2000)), tmp_path / "run", show_progress=False, data=DIGITS)
    assert not (tmp_path / "run").exists()


def test_the_default_cluster_count_is_ten_times_the_classes():
    assert DeepCluster(build_backbone("small"), 256, 8, num_classes=10, num_samples=500).num_clusters == 100


def test_resume_mid_epoch_and_at_an_epoch_boundary_equals_a_straight_run(tmp_path):
    # 21 steps per epoch: stop mid-epoch 1 (weights and labels from the checkpoint), then at the boundary 42
    straight = selfsup.train(cfg(steps=50), tmp_path / "a", evaluate=False, show_progress=False, data=DIGITS)
    selfsup.train(cfg(steps=50), tmp_path / "b", evaluate=False, show_progress=False, data=DIGITS, stop_at=30)
    selfsup.train(cfg(steps=50), resume=tmp_path / "b", evaluate=False, show_progress=False, data=DIGITS,
                  stop_at=42)
    resumed = selfsup.train(cfg(steps=50), resume=tmp_path / "b", evaluate=False, show_progress=False, data=DIGITS)
    assert_same_state(straight.method.state_dict(), resumed.method.state_dict())


def test_two_processes_cluster_and_train_like_one(tmp_path):
    state = assert_two_ranks_train_like_one(tmp_path, cfg(steps=25))  # two clusterings: at steps 0 and 21
    assert len(state["pseudo_labels"].unique()) > 10
