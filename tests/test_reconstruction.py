"""What the image-to-image pretexts share (denoising autoencoder, super-resolution): the decoder sized from any
backbone's map, the PSNR captions against a float64 loop, views() and outputs() built by the training step's own
code, and the outputs picture of a run."""

import math

import pytest
import torch
from PIL import Image
from torch import nn

import selfsup
from selfsup.backbones import build_backbone
from selfsup.config import TrainConfig
from selfsup.data import load_data
from selfsup.data.ops.base import IMAGENET_MEAN, IMAGENET_STD, normalize, resize
from selfsup.data.ops.noise import corrupt, sample_noise
from selfsup.data.ops.resample import low_resolution
from selfsup.data.views import augmented
from selfsup.methods import Batch
from selfsup.methods.dae import DenoisingAutoencoder
from selfsup.methods.reconstruction import pixel_decoder, psnr
from selfsup.methods.super_resolution import SuperResolution

IMAGES = load_data("digits").pretrain.images[:6]


def build(name: str):
    torch.manual_seed(0)
    if name == "dae":
        return DenoisingAutoencoder(build_backbone("small", 16), 256, 16, decoder_dim=16, mask_ratio=0.4)
    return SuperResolution(build_backbone("small", 16), 256, 16, decoder_dim=16)


def inputs(name: str, clean: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The input each method makes of clean images, from the ops directly (the noise drawn after the view)."""
    if name == "dae":
        return corrupt("masking", clean, sample_noise("masking", len(clean), (3, 16, 16), 0.4, g))
    return low_resolution(clean, 4)


def reference_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    values = list(zip(a.double().flatten().tolist(), b.double().flatten().tolist()))
    return 10 * math.log10(1 / (sum((x - y) ** 2 for x, y in values) / len(values)))


def test_psnr_is_ten_log10_of_one_over_the_mean_squared_error():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 3, 4, 4, generator=g), torch.rand(3, 3, 4, 4, generator=g)
    assert psnr(a, b).tolist() == pytest.approx([reference_psnr(x, y) for x, y in zip(a, b)], rel=1e-5)


@pytest.mark.parametrize("name,size", [("small", 16), ("small", 8), ("resnet18", 32), ("alexnet", 32), ("nin", 32)])
def test_the_decoder_makes_full_size_images_from_any_backbones_last_map(name, size):
    backbone = build_backbone(name, size).train()
    decoder = pixel_decoder(backbone, 3, size, 3, 16)
    assert backbone.training  # the sizing pass leaves the mode as it found it
    fmap = backbone.forward_features(torch.rand(2, 3, size, size))
    assert decoder(fmap, size).shape == (2, 3, size, size)


def test_a_foreign_backbone_with_a_map_gets_a_decoder_too():
    class Foreign(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 12, 3, stride=4, padding=1)

        def forward_features(self, x):
            return self.conv(x)

    foreign = Foreign()
    decoder = pixel_decoder(foreign, 3, 16, 3, 8)
    assert decoder(foreign.forward_features(torch.rand(2, 3, 16, 16)), 16).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("name", ["dae", "super-resolution"])
def test_views_show_the_input_the_step_builds_and_the_clean_target(name):
    m = build(name)
    panels = m.views(Batch(IMAGES, None, torch.arange(6), torch.Generator().manual_seed(1), 0.0))
    g = torch.Generator().manual_seed(1)
    clean = augmented(IMAGES, m.aug, 16, g)
    x = inputs(name, clean, g)
    assert len(panels) == 2 and torch.equal(panels[0].images, x) and torch.equal(panels[1].images, clean)
    assert [float(c.split()[1]) for c in panels[0].captions] == pytest.approx(
        [reference_psnr(a, b) for a, b in zip(x, clean)], abs=0.051)
    assert m.input_title in panels[0].title


@pytest.mark.parametrize("name", ["dae", "super-resolution"])
def test_outputs_are_the_input_and_the_clamped_reconstruction_of_the_test_images(name):
    m = build(name).eval()
    with torch.no_grad():
        panels = m.outputs(IMAGES, torch.Generator().manual_seed(2))
        clean = resize(IMAGES, 16)
        x = inputs(name, clean, torch.Generator().manual_seed(2))
        y = m.decoder(m.backbone.forward_features(normalize(x, IMAGENET_MEAN, IMAGENET_STD)), 16)
    assert [len(p.images) for p in panels] == [6, 6]
    assert torch.equal(panels[0].images, x)
    torch.testing.assert_close(panels[1].images, y.clamp(0, 1))
    assert all(float(p.images.min()) >= 0 and float(p.images.max()) <= 1 for p in panels)
    assert [float(c.split()[1]) for c in panels[1].captions] == pytest.approx(
        [reference_psnr(a, b) for a, b in zip(y.clamp(0, 1), clean)], abs=0.051)


def test_a_run_draws_its_outputs_picture(tmp_path):
    cfg = TrainConfig(method="dae", data="digits", steps=2, batch_size=16, image_size=8,
                      method_args=dict(decoder_dim=8))
    selfsup.train(cfg, tmp_path / "run", evaluate=False, show_progress=False, data=load_data("digits"))
    picture = Image.open(tmp_path / "run" / "outputs.png")
    assert picture.width > 8 * 8 and picture.height > 3 * 8  # 8 test images: originals, input, reconstruction
