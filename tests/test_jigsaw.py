"""Jigsaw: the puzzle a step builds against a per-image reference, the permutation set saved with the run, the
evaluated encoder, and 2 processes vs 1."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from selfsup.backbones import build_backbone
from selfsup.config import TrainConfig
from selfsup.data.ops.color import sample_flags
from selfsup.data.ops.crop import sample_resized_crop
from selfsup.data.permutations import max_hamming_permutations
from selfsup.data.views import augmented
from selfsup.methods import Batch
from selfsup.methods.jigsaw import Jigsaw
from tests.helpers import Recorder, assert_two_ranks_train_like_one


# the default tiles are cut straight from the images (crop, flip and grey folded into one sampling pass); resized
# tiles take the path that makes the augmented views first
@pytest.mark.parametrize("tile_size", [None, 8])
def test_a_step_cuts_normalises_and_shuffles_the_tiles_as_a_per_image_reference_does(tile_size):
    torch.manual_seed(0)
    method = Jigsaw(Recorder(), 8, 24, permutations=10, head_hidden_dim=0, tile_size=tile_size)
    images = torch.randint(0, 256, (6, 3, 30, 30), dtype=torch.uint8)
    loss = method.training_step(Batch(images, None, torch.arange(6), torch.Generator().manual_seed(7), 0.0))
    # the reference draws the same parameters in the same order: the view, 9 tiles per image, a permutation
    g = torch.Generator().manual_seed(7)
    x = augmented(images, method.aug, 24, g)
    u = torch.rand((6, 9, 2), generator=g, dtype=torch.float64)  # cell 8, tile round(8 * 64 / 85) = 6: 3 offsets
    index = torch.randint(10, (6,), generator=g)
    flags = torch.Generator().manual_seed(7)  # the view's draws again: some images flipped, some grey, some not
    sample_resized_crop(6, 30, 30, method.aug.crop_scale, generator=flags)
    flipped, grey = sample_flags(6, 0.5, flags), sample_flags(6, 0.3, flags)
    assert 0 < flipped.sum() < 6 and 0 < grey.sum() < 6
    side = tile_size or 6
    expected = []
    for b in range(6):
        tiles = []
        for cell in range(9):
            top, left = cell // 3 * 8 + int(u[b, cell, 0] * 3), cell % 3 * 8 + int(u[b, cell, 1] * 3)
            tile = TF.crop(x[b], top, left, 6, 6) if tile_size is None else \
                TF.resized_crop(x[b], top, left, 6, 6, [side, side], antialias=False)
            mean, std = tile.mean((1, 2), keepdim=True), tile.std((1, 2), unbiased=False, keepdim=True)
            tiles.append((tile - mean) / (std**2 + 1e-10).sqrt())
        expected += [tiles[i] for i in method.permutations[index[b]].tolist()]  # slot i shows cell p[i]
    assert method.backbone.seen.shape == (54, 3, side, side)
    torch.testing.assert_close(method.backbone.seen, torch.stack(expected), atol=1e-4, rtol=1e-4)
    logits = method.head(method.backbone.proj(torch.stack(expected).mean((2, 3))))
    torch.testing.assert_close(loss, F.cross_entropy(logits, index), atol=1e-5, rtol=1e-5)


def test_the_permutation_set_is_the_max_hamming_one_of_its_seed_and_is_saved_with_the_model():
    method = Jigsaw(build_backbone("small"), 256, 32, permutations=30, permutation_seed=4)
    assert torch.equal(method.state_dict()["permutations"], max_hamming_permutations(30, 9, seed=4))
    assert method.head.mlp[-1].out_features == 30


def test_the_evaluated_encoder_sees_each_image_standardised_per_channel_as_the_tiles_were():
    torch.manual_seed(0)
    method = Jigsaw(build_backbone("small"), 256, 16).eval()
    x = torch.randn(3, 3, 16, 16) * 2 + 1
    z = (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(method.encoder()(x), method.backbone(z), atol=1e-5, rtol=1e-4)
    assert method.encoder().stage_names == method.backbone.stage_names


def test_two_processes_train_jigsaw_like_one(tmp_path):
    cfg = TrainConfig(method="jigsaw", data="digits", batch_size=32, image_size=16, steps=3, log_every=1,
                      method_args=dict(permutations=20, head_hidden_dim=32))
    assert_two_ranks_train_like_one(tmp_path, cfg)
