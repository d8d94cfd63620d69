"""Colourisation: the L-channel encoder, the class rebalancing measured before the first step, the step's loss
against a reference, the outputs picture at every checkpoint, and 2 processes vs 1."""

import torch
import torch.nn.functional as F
from PIL import Image

import selfsup
from selfsup.backbones import build_backbone
from selfsup.config import TrainConfig
from selfsup.data.ops.ab import (
    ab_histogram,
    annealed_mean,
    near_grayscale,
    rebalance_weights,
    smooth_prior,
    soft_encode,
)
from selfsup.data.ops.base import IMAGENET_MEAN, IMAGENET_STD, normalize, resize
from selfsup.data.ops.lab import lab_to_rgb, rgb_to_lab
from selfsup.data.views import augmented
from selfsup.engine.build import build_method
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


def test_a_run_draws_the_colourised_test_images_at_every_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = TrainConfig(method="colorization", data="shapes", batch_size=32, image_size=16, epochs=2,
                      method_args=dict(decoder_dim=16))
    run = selfsup.train(cfg, tmp_path / "run", show_progress=False, data=SHAPES, evaluate=False)
    picture = Image.open(tmp_path / "run" / "outputs.png")
    assert picture.width > 8 * 16 and picture.height > 3 * 16  # 8 test images: originals, L, colourised
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0}).Reload()
    steps = [e.step for e in events.Images("outputs")]
    per_epoch = run.metrics["steps"] // 2
    assert steps == [per_epoch, 2 * per_epoch]


def test_outputs_are_the_annealed_mean_of_the_decoder_on_the_lightness():
    m = build_method(TrainConfig(method="colorization", image_size=16, method_args=dict(decoder_dim=16)), 16, 0)
    m.eval()
    images = SHAPES.test.images[:4]
    L_row, colour_row = m.outputs(images, torch.Generator())
    lab = rgb_to_lab(resize(images, 16))
    logits = m.decoder(m.backbone.forward_features((lab[:, :1] - 50) / 50), m.target_size)
    ab = F.interpolate(annealed_mean(logits, m.bins, m.temperature), size=16, mode="bilinear", align_corners=False)
    torch.testing.assert_close(colour_row.images, lab_to_rgb(torch.cat([lab[:, :1], ab], 1)), atol=1e-4, rtol=0)
    torch.testing.assert_close(L_row.images, lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(ab)], 1)),
                               atol=1e-4, rtol=0)


def test_two_processes_train_colourisation_like_one(tmp_path):
    cfg = TrainConfig(method="colorization", data="shapes", batch_size=32, image_size=16, steps=3, log_every=1,
                      method_args=dict(decoder_dim=16))
    assert_two_ranks_train_like_one(tmp_path, cfg, data="colour-shapes")
