"""Damaged jigsaw: the damage op against a per-image reference (skimage Lab, plain loops) and the law of the removed
cell, the puzzle and the three heads' targets a step builds against a per-image reference, views(), the evaluated
encoder, and 2 processes vs 1."""

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from skimage.color import rgb2lab

from selfsup.backbones import build_backbone
from selfsup.backbones.base import Backbone, StageInfo
from selfsup.config import TrainConfig
from selfsup.data.ops.ab import near_grayscale, soft_encode
from selfsup.data.ops.damage import damage_tiles, remove_tile, sample_missing_cell
from selfsup.data.views import augmented
from selfsup.losses.colour import colorization_loss
from selfsup.methods import Batch
from selfsup.methods.damaged_jigsaw import DamagedJigsaw
from tests.helpers import assert_two_ranks_train_like_one


def reference_lab(tile: torch.Tensor) -> torch.Tensor:
    """skimage's Lab of one (3, h, w) tile, as (3, h, w) float64."""
    return torch.from_numpy(rgb2lab(tile.permute(1, 2, 0).double().numpy())).permute(2, 0, 1)


def reference_damage(tiles: torch.Tensor, blank: int) -> torch.Tensor:
    """One puzzle's tiles (T, 3, h, w) -> (T, 1, h, w): L standardised tile by tile, tile ``blank`` zero."""
    out = []
    for t, tile in enumerate(tiles):
        L = reference_lab(tile)[:1]
        z = (L - L.mean()) / (L.var(unbiased=False) + 1e-10).sqrt()
        out.append(torch.zeros_like(z) if t == blank else z)
    return torch.stack(out).float()


def test_damage_keeps_only_each_tiles_standardised_lightness_and_blanks_the_missing_one():
    g = torch.Generator().manual_seed(0)
    tiles = torch.rand(3, 9, 3, 5, 5, generator=g)
    missing = torch.tensor([0, 4, 8])
    damaged, ab = damage_tiles(tiles, missing)
    for b in range(3):
        torch.testing.assert_close(damaged[b], reference_damage(tiles[b], int(missing[b])), atol=1e-4, rtol=1e-4)
        for t in range(9):
            torch.testing.assert_close(ab[b, t], reference_lab(tiles[b, t])[1:].float(), atol=2e-3, rtol=1e-4)
    assert torch.equal(remove_tile(torch.ones(2, 4, 1), torch.tensor([1, 3]), fill=-1.0).squeeze(2),
                       torch.tensor([[1.0, -1.0, 1.0, 1.0], [1.0, 1.0, 1.0, -1.0]]))


def test_the_removed_cell_is_uniform_over_the_cells():
    cells = sample_missing_cell(90_000, 9, torch.Generator().manual_seed(1))
    assert cells.dtype == torch.int64 and int(cells.min()) == 0 and int(cells.max()) == 8
    freq = torch.bincount(cells, minlength=9).double() / len(cells)
    torch.testing.assert_close(freq, torch.full((9,), 1 / 9, dtype=torch.float64), atol=0.005, rtol=0)
    same = sample_missing_cell(50, 9, torch.Generator().manual_seed(3))
    assert torch.equal(same, sample_missing_cell(50, 9, torch.Generator().manual_seed(3)))  # seeded


class Recorder(Backbone):
    """A one-stage backbone that remembers what it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = torch.nn.ModuleList([torch.nn.Conv2d(1, 4, 3, padding=1)])
        self.stage_info, self.in_channels, self.out_dim = [StageInfo("conv", 4, 1)], 1, 4

    def forward_stages(self, x):
        self.seen = x
        return super().forward_stages(x)


def reference_puzzle(method: DamagedJigsaw, images: torch.Tensor, seed: int):
    """The per-image reference of a step's puzzle: (trunk input, permutation, missing cell, slot, missing tile in
    RGB, every tile's ab at the target size), tiles in slot order; draws as the step does."""
    g = torch.Generator().manual_seed(seed)
    x = augmented(images, method.aug, method.image_size, g)
    b, cell, side = len(images), method.image_size // 3, method.side
    u = torch.rand((b, 9, 2), generator=g, dtype=torch.float64)
    index = torch.randint(len(method.permutations), (b,), generator=g)
    missing = torch.randint(9, (b,), generator=g)
    inputs, tiles, abs_, slots = [], [], [], []
    for i in range(b):
        crops = [TF.crop(x[i], c // 3 * cell + int(u[i, c, 0] * (cell - side + 1)),
                         c % 3 * cell + int(u[i, c, 1] * (cell - side + 1)), side, side) for c in range(9)]
        order = method.permutations[index[i]].tolist()  # slot s shows cell order[s]
        slot = order.index(int(missing[i]))
        shuffled = torch.stack([crops[c] for c in order])
        inputs.append(reference_damage(shuffled, slot))
        tiles.append(crops[int(missing[i])])
        abs_ += [F.avg_pool2d(reference_lab(t)[1:].float(), side // method.target_size) for t in shuffled]
        slots.append(slot)
    return (torch.stack(inputs), index, missing, torch.tensor(slots), torch.stack(tiles), torch.stack(abs_))


def test_a_step_damages_the_puzzle_and_builds_every_heads_target_as_a_per_image_reference_does():
    torch.manual_seed(0)
    method = DamagedJigsaw(Recorder(), 4, 24, permutations=10, head_hidden_dim=16, tile_dim=8, decoder_dim=8,
                           target_stride=3, generator_width=8, missing_weight=0.5, colour_weight=2.0)
    images = torch.randint(0, 256, (4, 3, 30, 30), dtype=torch.uint8)
    terms = method.training_step(Batch(images, None, torch.arange(4), torch.Generator().manual_seed(7), 0.0))
    inputs, index, missing, slot, tile, ab = reference_puzzle(method, images, 7)
    assert method.side == 6 and method.target_size == 2
    torch.testing.assert_close(method.backbone.seen, inputs.flatten(0, 1), atol=1e-4, rtol=1e-4)
    p = method._puzzle(Batch(images, None, torch.arange(4), torch.Generator().manual_seed(7), 0.0))
    assert torch.equal(p.index, index) and torch.equal(p.missing, missing) and torch.equal(p.slot, slot)
    torch.testing.assert_close(p.colour[torch.arange(4), p.slot], tile, atol=1e-5, rtol=0)  # in colour
    torch.testing.assert_close(p.ab, ab, atol=2e-3, rtol=1e-4)
    # the loss terms from the reference's inputs and targets, through the method's own heads
    fmap = method.backbone.stages[0](inputs.flatten(0, 1))
    feats = fmap.mean((2, 3))
    keep = torch.ones(4, 9, dtype=torch.bool)
    keep[torch.arange(4), slot] = False
    colour = colorization_loss(method.decoder(fmap, 2), soft_encode(ab, method.bins), torch.ones(len(method.bins)),
                               keep.flatten() & ~near_grayscale(ab))
    expected = {"permutation": F.cross_entropy(method.head(feats), index),
                "missing_tile": 0.5 * F.mse_loss(method.inpainter(feats), tile * 2 - 1),
                "colour": 2.0 * colour}
    assert terms.keys() == expected.keys()
    for k in terms:
        torch.testing.assert_close(terms[k], expected[k], atol=1e-4, rtol=1e-4, msg=k)


def test_the_missing_tile_adds_nothing_to_the_colour_loss():
    torch.manual_seed(0)
    method = DamagedJigsaw(Recorder(), 4, 24, permutations=10, head_hidden_dim=16, tile_dim=8, decoder_dim=8).eval()
    images = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8)
    seen = {}  # eval mode: batch norm would otherwise couple the tiles

    def keep_map(module, args):
        args[0].retain_grad()
        seen["fmap"] = args[0]

    method.decoder.register_forward_pre_hook(keep_map)
    batch = Batch(images, None, torch.arange(2), torch.Generator().manual_seed(2), 0.0)
    method.training_step(batch)["colour"].backward()
    p = method._puzzle(Batch(images, None, torch.arange(2), torch.Generator().manual_seed(2), 0.0))
    grad = seen["fmap"].grad.abs().flatten(1).sum(1).view(2, 9)
    assert float(grad[torch.arange(2), p.slot].sum()) == 0.0 and bool((grad.sum(1) > 0).all())


def test_views_show_the_damaged_puzzle_with_its_permutation_and_missing_cell_and_the_targets():
    torch.manual_seed(0)
    method = DamagedJigsaw(build_backbone("small", 24, in_channels=1), 256, 24, permutations=10,
                           head_hidden_dim=16, tile_dim=8, decoder_dim=8)
    images = torch.randint(0, 256, (3, 3, 24, 24), dtype=torch.uint8)
    panels = method.views(Batch(images, None, torch.arange(3), torch.Generator().manual_seed(5), 0.0))
    p = method._puzzle(Batch(images, None, torch.arange(3), torch.Generator().manual_seed(5), 0.0))
    assert [tuple(q.images.shape) for q in panels] == [(3, 1, 20, 20), (3, 3, 6, 6), (3, 3, 5, 5)]
    assert panels[0].captions == [f"permutation {i}, missing cell {c} (slot {s})" for i, c, s in
                                  zip(p.index.tolist(), p.missing.tolist(), p.slot.tolist())]
    assert panels[1].captions == [f"cell {c}" for c in p.missing.tolist()]
    torch.testing.assert_close(panels[1].images, p.colour[torch.arange(3), p.slot])
    for q in panels:
        assert float(q.images.min()) >= 0.0 and float(q.images.max()) <= 1.0
    blank_rows = p.slot // 3 * 7, p.slot % 3 * 7  # the blank tile is black in the mosaic
    for b in range(3):
        r, c = int(blank_rows[0][b]), int(blank_rows[1][b])
        assert float(panels[0].images[b, :, r : r + 6, c : c + 6].abs().max()) == 0.0


def test_the_evaluated_encoder_sees_the_lightness_standardised_per_image():
    torch.manual_seed(0)
    method = DamagedJigsaw(build_backbone("small", 16, in_channels=1), 256, 16).eval()
    rgb = torch.rand(2, 3, 16, 16)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    L = torch.stack([reference_lab(x)[:1] for x in rgb]).float()
    z = (L - L.mean((2, 3), keepdim=True)) / L.std((2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(method.encoder()((rgb - mean) / std), method.backbone(z), atol=1e-4, rtol=1e-3)
    assert np.isclose(float(z.std()), 1.0, atol=0.05)


def test_two_processes_train_damaged_jigsaw_like_one(tmp_path):
    cfg = TrainConfig(method="damaged-jigsaw", data="digits", batch_size=16, image_size=24, steps=3, log_every=1,
                      method_args=dict(permutations=20, head_hidden_dim=32, tile_dim=16, decoder_dim=16,
                                       generator_width=8))
    assert_two_ranks_train_like_one(tmp_path, cfg, data="colour-shapes")
