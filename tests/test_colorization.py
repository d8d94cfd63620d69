"""Colourisation: the L-channel encoder, the class rebalancing measured before the first step, the step's loss
against a reference, the picture, and 2 processes vs 1."""

import torch
import torch.nn.functional as F

import selfsup
from selfsup.backbones import build_backbone
from selfsup.config import TrainConfig
from selfsup.data.ops.ab import ab_histogram, near_grayscale, rebalance_weights, smooth_prior, soft_encode
from selfsup.data.ops.base import IMAGENET_MEAN, IMAGENET_STD, normalize, resize
from selfsup.data.ops.lab import rgb_to_lab
from selfsup.data.views import augmented
from selfsup.engine.epoch import Epoch
from selfsup.losses.colour import colorization_loss
from selfsup.methods import Batch
from selfsup.methods.colorization import Colorization
from tests.helpers import assert_two_ranks_train_like_one, colour_shapes

SHAPES = colour_shapes(120, 16)


def method():
    torch.manual_seed(0)
    return Colorization(build_backbone("small", 16, in_channels=1), 256, 16, decoder_dim=16)


def test_the_encoder_feeds_the_backbone_the_scaled_lightness_of_its_rgb_input():
    m = method().eval()
    rgb = torch.rand(3, 3, 16, 16)
    lightness = (rgb_to_lab(rgb)[:, :1] - 50) / 50
    torch.testing.assert_close(m.encoder()(normalize(rgb, IMAGENET_MEAN, IMAGENET_STD)), m.backbone(lightness),
                               atol=1e-4, rtol=1e-4)
    assert m.backbone.in_channels == 1


def test_rebalancing_weights_come_from_the_training_sets_smoothed_ab_histogram_before_the_first_step():
    m = method()
    images = SHAPES.pretrain.images
    m.on_epoch_start(Epoch(0, images, m, {}, torch.device("cpu"), seed=0))
    ab = F.interpolate(rgb_to_lab(resize(images, 16))[:, 1:], size=4, mode="area")
    expected = rebalance_weights(smooth_prior(ab_histogram(ab, m.bins), m.bins, 5.0), 0.5)
    torch.testing.assert_close(m.weights, expected)
    before = m.weights.clone()
    m.on_epoch_start(Epoch(1, images[:5], m, {}, torch.device("cpu"), seed=0))  # later epochs keep them
    assert torch.equal(m.weights, before)


def test_the_loss_is_the_rebalanced_cross_entropy_against_soft_encoded_ab_at_a_quarter_of_the_size():
    m = method()
    m.weights.copy_(torch.rand(len(m.bins)) + 0.5)
    images = SHAPES.pretrain.images[:6]
    loss = m.training_step(Batch(images, None, torch.arange(6), torch.Generator().manual_seed(2), 0.0))
    rgb = augmented(images, m.aug, 16, torch.Generator().manual_seed(2))
    lab = rgb_to_lab(rgb)
    ab = F.interpolate(lab[:, 1:], size=4, mode="area")
    logits = m.decoder(m.backbone.forward_features((lab[:, :1] - 50) / 50), 4)
    expected = colorization_loss(logits, soft_encode(ab, m.bins, 5, 5.0), m.weights, ~near_grayscale(ab))
    torch.testing.assert_close(loss, expected)


def test_a_run_writes_the_colourised_test_images(tmp_path):
    cfg = TrainConfig(method="colorization", data="shapes", batch_size=32, image_size=16, steps=2,
                      method_args=dict(decoder_dim=16))
    selfsup.train(cfg, tmp_path / "run", show_progress=False, data=SHAPES)
    assert (tmp_path / "run" / "colorized.png").stat().st_size > 1000


def test_two_processes_train_colourisation_like_one(tmp_path):
    cfg = TrainConfig(method="colorization", data="shapes", batch_size=32, image_size=16, steps=3, log_every=1,
                      method_args=dict(decoder_dim=16))
    assert_two_ranks_train_like_one(tmp_path, cfg, data="colour-shapes")
