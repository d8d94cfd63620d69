"""The jigsaw tile ops against per-image / per-tile references and their samplers' distributions, the tiles of
augmented views cut straight from the images against cutting per-image views, and the maximal-Hamming permutation
set against a plain-Python Algorithm 1 (Noroozi & Favaro, ECCV 2016)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch.testing import assert_close

from selfsup.data import augment as A
from selfsup.data.ops import crop as R
from selfsup.data.ops import tiles as J
from selfsup.data.ops.color import sample_flags
from selfsup.data.permutations import all_permutations, max_hamming_permutations
from selfsup.errors import UserError

SHAPES = ((27, 27), (20, 36), (40, 28))  # square, wide and tall inputs


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(seed: int, batch: int, height: int, width: int) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=_gen(seed))


def _cells(height: int, width: int, grid: int) -> tuple[int, int, int]:
    """Cell side and the corner of the centred grid, as the docstring of sample_grid_tiles defines them."""
    cell = min(height, width) // grid
    return cell, (height - grid * cell) // 2, (width - grid * cell) // 2


# ------------------------------------------------------------------------------------------------ crop_tiles


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [16, 7, 3])  # upscaling, about the tile size, downscaling
@pytest.mark.parametrize("boxes_from", ["grid", "free"])
def test_crop_tiles_matches_torchvision_per_tile(shape, size, boxes_from):
    batch, tiles = 3, 9
    x = _images(size, batch, *shape)
    if boxes_from == "grid":
        boxes = J.sample_grid_tiles(batch, *shape, generator=_gen(size))
    else:  # any boxes, of any aspect ratio, anywhere in the image
        boxes = R.sample_resized_crop(batch * tiles, *shape, generator=_gen(size)).view(batch, tiles, 4)
    out = J.crop_tiles(x, boxes, size)
    expected = torch.stack([torch.stack([TF.resized_crop(img, *[int(v) for v in box], [size, size], antialias=False)
                                         for box in image_boxes]) for img, image_boxes in zip(x, boxes)])
    assert out.shape == (batch, tiles, 3, size, size) and out.is_contiguous()
    assert_close(out, expected, atol=1e-5, rtol=0)


def test_crop_tiles_at_tile_size_is_the_slice():
    x = _images(0, 4, 30, 30)
    boxes = J.sample_grid_tiles(4, 30, 30, tile_frac=0.7, generator=_gen(0))
    side = int(boxes[0, 0, 2])
    expected = torch.stack([torch.stack([img[:, t:t + side, l:l + side] for t, l, _, _ in image_boxes.long()])
                            for img, image_boxes in zip(x, boxes)])
    assert_close(J.crop_tiles(x, boxes, side), expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- normalize_tiles


def _normalize_reference(tiles: torch.Tensor, eps: float) -> torch.Tensor:
    """Tile by tile and channel by channel in float64: (x - mean) / sqrt(population variance + eps^2)."""
    flat = tiles.double().reshape(-1, *tiles.shape[-2:])
    out = torch.empty_like(flat)
    for i, channel in enumerate(flat):
        mean = channel.sum() / channel.numel()
        var = ((channel - mean) ** 2).sum() / channel.numel()
        out[i] = (channel - mean) / (var + eps**2).sqrt()
    return out.view(tiles.shape)


@pytest.mark.parametrize("shape", [(2, 9, 3, 6, 6), (5, 3, 4, 7)])  # (B, T, C, h, w) and flattened (B*T, C, h, w)
def test_normalize_tiles_matches_per_tile_loop(shape):
    tiles = torch.rand(shape, generator=_gen(1)) * torch.rand(shape[:-2] + (1, 1), generator=_gen(2))
    tiles.view(-1, *shape[-3:])[1] = 0.3  # a constant tile
    tiles.view(-1, *shape[-3:])[2, 0] = 0.8  # a constant channel in a tile that is not constant
    out = J.normalize_tiles(tiles)
    assert torch.isfinite(out).all()
    assert_close(out.double(), _normalize_reference(tiles, 1e-5), atol=1e-5, rtol=1e-5)
    assert (out.view(-1, *shape[-3:])[1] == 0).all() and (out.view(-1, *shape[-3:])[2, 0] == 0).all()
    varied = out.view(-1, *shape[-3:])[3:].double()
    assert_close(varied.mean((-2, -1)), torch.zeros(varied.shape[:-2], dtype=torch.float64), atol=1e-6, rtol=0)
    assert_close(varied.std((-2, -1), correction=0), torch.ones(varied.shape[:-2], dtype=torch.float64),
                 atol=1e-5, rtol=0)


def test_normalize_tiles_does_not_amplify_rounding_noise():
    flat = torch.full((1, 1, 3, 8, 8), 0.5) + torch.randn(1, 1, 3, 8, 8, generator=_gen(0)) * 1e-8
    assert J.normalize_tiles(flat).abs().max() < 1e-2


# --------------------------------------------------------------------------------------------- permute_tiles


def test_permute_tiles_matches_loop():
    batch, tiles = 6, 9
    x = torch.randn(batch, tiles, 2, 3, 3, generator=_gen(0))
    perms = max_hamming_permutations(5, tiles)
    index = torch.tensor([0, 4, 2, 2, 1, 3])
    expected = torch.stack([torch.stack([x[b, perms[index[b], i]] for i in range(tiles)]) for b in range(batch)])
    assert torch.equal(J.permute_tiles(x, perms, index), expected)
    # permuting by the inverse permutation puts every tile back in its cell
    inverse = perms.argsort(1)
    assert torch.equal(J.permute_tiles(J.permute_tiles(x, perms, index), inverse, index), x)


def test_permuting_boxes_then_cropping_equals_cropping_then_permuting():
    x = _images(3, 4, 24, 24)
    boxes = J.sample_grid_tiles(4, 24, 24, generator=_gen(3))
    perms = all_permutations(9)[torch.randperm(362880, generator=_gen(4))[:10]]
    index = J.sample_permutation_index(4, 10, generator=_gen(5))
    assert torch.equal(J.crop_tiles(x, J.permute_tiles(boxes, perms, index), 8),
                       J.permute_tiles(J.crop_tiles(x, boxes, 8), perms, index))


def test_sample_permutation_index_is_uniform_and_seeded():
    index = J.sample_permutation_index(40_000, 10, generator=_gen(0))
    assert index.dtype == torch.int64 and index.min() == 0 and index.max() == 9
    freq = torch.bincount(index, minlength=10).double() / len(index)
    assert (freq - 0.1).abs().max() < 0.01
    assert torch.equal(index, J.sample_permutation_index(40_000, 10, generator=_gen(0)))


# ----------------------------------------------------------------------------------------- sample_grid_tiles


@pytest.mark.parametrize("shape", [(255, 255), (32, 32), (64, 48), (40, 96), (96, 96)])
@pytest.mark.parametrize("grid", [3, 2])
def test_sample_grid_tiles_stay_in_their_cells(shape, grid):
    height, width = shape
    frac = 64 / 85
    boxes = J.sample_grid_tiles(500, height, width, grid, frac, generator=_gen(0))
    cell, top0, left0 = _cells(height, width, grid)
    side = max(1, round(cell * frac))
    assert boxes.shape == (500, grid * grid, 4) and boxes.dtype == torch.float32
    assert torch.equal(boxes, boxes.round())
    assert (boxes[..., 2:] == side).all()
    top, left = boxes[..., 0], boxes[..., 1]
    for t in range(grid * grid):  # row-major cells
        cell_top, cell_left = top0 + (t // grid) * cell, left0 + (t % grid) * cell
        assert (top[:, t] >= cell_top).all() and (top[:, t] + side <= cell_top + cell).all()
        assert (left[:, t] >= cell_left).all() and (left[:, t] + side <= cell_left + cell).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + side <= height).all() and (left + side <= width).all()


def test_sample_grid_tiles_sides_of_the_paper_and_small_images():
    # 255 px -> 85 px cells -> 64 px tiles (the paper); 32 / 64 / 96 px -> 10 / 21 / 32 px cells
    for size, expected in ((255, 64), (32, 8), (64, 16), (96, 24)):
        assert J.sample_grid_tiles(1, size, size, generator=_gen(0))[0, :, 2].eq(expected).all()
        assert J.tile_side(size, size) == expected
    # tiles that fill their cells tile the centred square: rows 2 + {0, 10, 20}, columns {0, 10, 20}
    full = J.sample_grid_tiles(2, 35, 30, tile_frac=1.0, generator=_gen(0))
    cells = torch.tensor([[2 + r * 10, c * 10] for r in range(3) for c in range(3)], dtype=torch.float32)
    assert torch.equal(full[..., :2], cells.expand(2, -1, -1)) and (full[..., 2:] == 10).all()


def test_sample_grid_tiles_offsets_are_uniform_over_the_gap():
    boxes = J.sample_grid_tiles(2000, 255, 255, generator=_gen(1))
    cells = torch.tensor([[r * 85, c * 85] for r in range(3) for c in range(3)], dtype=torch.float32)
    offsets = (boxes[..., :2] - cells).long()  # uniform on {0, ..., 85 - 64} = 22 values, per cell and axis
    for column in offsets.reshape(-1, 2).unbind(1):
        assert column.min() == 0 and column.max() == 21
        assert abs(column.double().mean().item() - 10.5) < 0.1  # standard error ~0.05
        freq = torch.bincount(column, minlength=22).double() / len(column)
        assert len(freq) == 22 and (freq - 1 / 22).abs().max() < 0.006
    # every cell and both axes get the same distribution: the per-cell means agree
    assert (offsets.double().mean(0) - 10.5).abs().max() < 0.5


def test_sample_grid_tiles_is_seeded():
    a = J.sample_grid_tiles(64, 64, 64, generator=_gen(7))
    assert torch.equal(a, J.sample_grid_tiles(64, 64, 64, generator=_gen(7)))
    assert not torch.equal(a, J.sample_grid_tiles(64, 64, 64, generator=_gen(8)))


def test_sample_grid_tiles_moves_to_the_requested_device():
    boxes = J.sample_grid_tiles(4, 32, 32, generator=_gen(0), device="meta")
    assert boxes.device.type == "meta" and boxes.shape == (4, 9, 4)
    assert J.sample_permutation_index(4, 10, generator=_gen(0), device="meta").device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tile_ops_on_cuda_with_a_cuda_generator():
    generator = torch.Generator(device="cuda").manual_seed(0)
    boxes = J.sample_grid_tiles(8, 64, 64, generator=generator, device="cuda")
    index = J.sample_permutation_index(8, 100, generator=generator, device="cuda")
    assert boxes.is_cuda and index.is_cuda
    x = _images(0, 8, 64, 64).cuda()
    perms = max_hamming_permutations(100)
    out = J.normalize_tiles(J.permute_tiles(J.crop_tiles(x, boxes, 16), perms, index))
    expected = J.normalize_tiles(J.permute_tiles(J.crop_tiles(x.cpu(), boxes.cpu(), 16), perms, index.cpu()))
    assert out.is_cuda and out.shape == (8, 9, 3, 16, 16)
    assert_close(out.cpu(), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("args", [(20, 2, 3), (32, 32, 0), (32, 32, 3, 0.0), (32, 32, 3, 1.5)])
def test_sample_grid_tiles_rejects_bad_input(args):
    with pytest.raises(UserError):
        J.sample_grid_tiles(1, *args)
    with pytest.raises(UserError):
        J.tile_side(*args)


# ------------------------------------------------------------------------- augment_tiles: tiles of augmented views

JIGSAW_AUG = dict(crop_scale=(0.3, 1.0), jitter_p=0.0, gray_p=0.3)  # jigsaw's recipe, with smaller crops


def _view_tiles_reference(images, view, flips, grey, size, boxes, out):
    """Image by image: torchvision's resized crop (no antialiasing) to the view, its flip and grayscale, then every
    tile sliced from the view and, at another size, bilinearly resized with ``F.interpolate``."""
    result = []
    for img, (top, left, h, w), flip, g, image_boxes in zip(images, view.long().tolist(), flips, grey, boxes):
        x = TF.resized_crop(TF.to_dtype(img, torch.float32, scale=True), top, left, h, w, [size, size],
                            antialias=False)
        x = TF.horizontal_flip(x) if flip else x
        x = TF.rgb_to_grayscale(x, num_output_channels=3) if g else x
        tiles = [x[:, t:t + th, l:l + tw] for t, l, th, tw in image_boxes.long().tolist()]
        result.append(torch.stack([F.interpolate(t[None], size=(out, out), mode="bilinear", align_corners=False)[0]
                                   if t.shape[-1] != out else t for t in tiles]))
    return torch.stack(result)


@pytest.mark.parametrize("shape", [(40, 30), (27, 27)])
@pytest.mark.parametrize("aug", [{}, dict(flip_p=0.0, gray_p=0.0), dict(gray_p=1.0)])
@pytest.mark.parametrize("out", [None, 11])  # the tiles' own 7 px (one sampling pass from the images), or resized
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augment_tiles_matches_cutting_per_image_views(shape, aug, out, dtype, monkeypatch):
    monkeypatch.setattr(A, "TILE_CHUNK", 5)  # the CPU cuts 5 images at a time: 5 + 5 + 2
    batch, size, side = 12, 27, 7  # 9 px cells, tiles of round(9 * 64 / 85) = 7 px
    cfg = A.AugmentConfig(**{**JIGSAW_AUG, **aug})
    images = torch.randint(0, 256, (batch, 3, *shape), dtype=torch.uint8, generator=_gen(1))
    g = _gen(5)
    cut = A.augment_tiles(images if dtype == torch.uint8 else images / 255.0, cfg, size, g, side, out)
    boxes = J.sample_grid_tiles(batch, size, size, generator=g)
    tiles = cut(boxes)
    # the same draws in augment's order: the views' boxes, flips and grayscale flags, then the tiles
    r = _gen(5)
    view = R.sample_resized_crop(batch, *shape, cfg.crop_scale, cfg.crop_ratio, r)
    no = torch.zeros(batch, dtype=torch.bool)
    flips = sample_flags(batch, cfg.flip_p, r) if cfg.flip_p else no
    grey = sample_flags(batch, cfg.gray_p, r) if cfg.gray_p else no
    assert torch.equal(J.sample_grid_tiles(batch, size, size, generator=r), boxes)
    if not aug:
        assert 0 < flips.sum() < batch and 0 < grey.sum() < batch
    expected = _view_tiles_reference(images, view, flips, grey, size, boxes, out or side)
    assert tiles.shape == (batch, 9, 3, out or side, out or side) and tiles.dtype == torch.float32
    assert tiles.is_contiguous()
    assert_close(tiles, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("aug", [{}, dict(gray_p=0.0), dict(jitter_p=0.8)])  # with and without grey, views first
def test_augment_tiles_cuts_one_channel_of_each_tile_as_selecting_it_after(aug, monkeypatch):
    monkeypatch.setattr(A, "TILE_CHUNK", 5)
    cfg = A.AugmentConfig(**{**JIGSAW_AUG, **aug})
    images = torch.randint(0, 256, (12, 3, 30, 30), dtype=torch.uint8, generator=_gen(0))
    boxes = J.sample_grid_tiles(12, 27, 27, generator=_gen(9))
    channels = torch.randint(0, 3, (12, 9), generator=_gen(8))
    every = A.augment_tiles(images, cfg, 27, _gen(3), 7)(boxes)
    one = A.augment_tiles(images, cfg, 27, _gen(3), 7)(boxes, channels=channels)
    assert one.shape == (12, 9, 1, 7, 7)
    for b, t in itertools.product(range(12), range(9)):
        assert_close(one[b, t, 0], every[b, t, channels[b, t]], atol=1e-6, rtol=0)
    assert torch.equal(J.select_tile_channels(every, None), every)


@pytest.mark.parametrize("aug", [{}, dict(jitter_p=0.8)])  # tiles cut straight from the images, or views first
def test_augment_tiles_finishes_every_image_once_in_order(aug, monkeypatch):
    monkeypatch.setattr(A, "TILE_CHUNK", 5)
    cfg = A.AugmentConfig(**{**JIGSAW_AUG, **aug})
    images = torch.randint(0, 256, (12, 3, 30, 30), dtype=torch.uint8, generator=_gen(0))
    boxes = J.sample_grid_tiles(12, 27, 27, generator=_gen(9))
    plain = A.augment_tiles(images, cfg, 27, _gen(3), 7)(boxes)
    seen = []

    def finish(tiles: torch.Tensor, rows: slice) -> torch.Tensor:
        seen.extend(range(12)[rows])
        return J.normalize_tiles(tiles)

    finished = A.augment_tiles(images, cfg, 27, _gen(3), 7)(boxes, finish)
    assert seen == list(range(12))
    assert_close(finished, J.normalize_tiles(plain), atol=1e-5, rtol=0)


@pytest.mark.parametrize("aug", [dict(jitter_p=0.8), dict(blur_p=0.5), dict(solarize_p=0.5)])
def test_augment_tiles_with_other_ops_cuts_the_augmented_views(aug):
    cfg = A.AugmentConfig(**{**JIGSAW_AUG, **aug})
    images = torch.randint(0, 256, (8, 3, 30, 30), dtype=torch.uint8, generator=_gen(0))
    g = _gen(3)
    cut = A.augment_tiles(images, cfg, 27, g, 7)
    boxes = J.sample_grid_tiles(8, 27, 27, generator=g)
    r = _gen(3)
    views = A.augment(images, cfg, 27, r)
    assert torch.equal(J.sample_grid_tiles(8, 27, 27, generator=r), boxes)
    assert torch.equal(cut(boxes), J.crop_tiles(views, boxes, 7))


def test_augment_tiles_turns_all_the_tiles_of_an_image_grey_with_probability_gray_p():
    images = torch.randint(0, 256, (4000, 3, 12, 12), dtype=torch.uint8, generator=_gen(0))
    g = _gen(1)
    cut = A.augment_tiles(images, A.AugmentConfig(**JIGSAW_AUG), 12, g, 3)  # 4 px cells, 3 px tiles
    tiles = cut(J.sample_grid_tiles(4000, 12, 12, generator=g))
    grey = (tiles - tiles[:, :, :1]).flatten(2).abs().amax(2) == 0  # (B, T): the three channels equal
    assert (grey.all(1) | ~grey.any(1)).all()  # an image's tiles are all grey or none is
    assert abs(grey[:, 0].double().mean().item() - 0.3) < 0.025  # standard error ~0.007


def test_augment_tiles_of_a_rank_are_its_rows_of_the_global_batch():
    cfg = A.AugmentConfig(**JIGSAW_AUG)
    images = torch.randint(0, 256, (8, 3, 30, 30), dtype=torch.uint8, generator=_gen(0))
    g = _gen(4)
    cut = A.augment_tiles(images, cfg, 27, g, 7)
    whole = cut(J.sample_grid_tiles(8, 27, 27, generator=g))
    for rank in range(2):
        rows = slice(rank * 4, rank * 4 + 4)
        g = _gen(4)
        cut = A.augment_tiles(images[rows], cfg, 27, g, 7, shard=(rank, 2))
        assert torch.equal(cut(J.sample_grid_tiles(8, 27, 27, generator=g)[rows]), whole[rows])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_tiles_on_cuda_with_cpu_or_cuda_generator():
    cfg = A.AugmentConfig(**JIGSAW_AUG)
    images = torch.randint(0, 256, (64, 3, 40, 30), dtype=torch.uint8, generator=_gen(0))

    def tiles(x, generator):
        cut = A.augment_tiles(x, cfg, 27, generator, 7)
        return cut(J.sample_grid_tiles(64, 27, 27, generator=generator, device=x.device))

    out = tiles(images.cuda(), _gen(2))  # a CPU generator: the same draws as on the CPU
    assert out.is_cuda
    assert_close(out.cpu(), tiles(images, _gen(2)), atol=1e-5, rtol=0)
    cuda = torch.Generator(device="cuda").manual_seed(2)  # a CUDA generator: the views made on the GPU, then cut
    out = tiles(images.cuda(), cuda)
    cuda = torch.Generator(device="cuda").manual_seed(2)
    views = A.augment(images.cuda(), cfg, 27, cuda)
    assert_close(out, J.crop_tiles(views, J.sample_grid_tiles(64, 27, 27, generator=cuda, device="cuda"), 7),
                 atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ permutations


def _algorithm1(n: int, tiles: int, first: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Algorithm 1 of the paper, plainly: move the first choice out of the candidates, then repeatedly move out
    the candidate with the largest summed Hamming distance to the chosen ones (the first such: argmax)."""
    remaining = list(itertools.permutations(range(tiles)))
    chosen = [remaining.pop(remaining.index(first))]
    while len(chosen) < n:
        totals = [sum(sum(a != b for a, b in zip(candidate, c)) for c in chosen) for candidate in remaining]
        chosen.append(remaining.pop(totals.index(max(totals))))
    return chosen


def _pairwise(perms: torch.Tensor) -> torch.Tensor:
    """Hamming distances between distinct rows, flattened."""
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    return d[~torch.eye(len(perms), dtype=torch.bool)].double()


def test_all_permutations_is_itertools_order():
    for tiles in range(1, 7):
        expected = torch.tensor(list(itertools.permutations(range(tiles)))).view(-1, tiles)
        assert torch.equal(all_permutations(tiles), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tiles,n", [(5, 10), (4, 12), (6, 8)])
def test_max_hamming_matches_plain_algorithm1(seed, tiles, n):
    perms = max_hamming_permutations(n, tiles, seed)
    assert perms.dtype == torch.int64 and perms.shape == (n, tiles)
    assert [tuple(p) for p in perms.tolist()] == _algorithm1(n, tiles, tuple(perms[0].tolist()))


def test_max_hamming_rows_are_distinct_permutations_and_seeded():
    perms = max_hamming_permutations(50, 9, seed=0)
    assert torch.equal(perms.sort(1).values, torch.arange(9).expand(50, 9))
    assert len(set(map(tuple, perms.tolist()))) == 50
    assert torch.equal(perms, max_hamming_permutations(50, 9, seed=0))
    assert not torch.equal(perms, max_hamming_permutations(50, 9, seed=1))


def test_max_hamming_with_all_permutations_returns_them_all():
    perms = max_hamming_permutations(24, 4)
    assert set(map(tuple, perms.tolist())) == set(itertools.permutations(range(4)))


def test_max_hamming_beats_random_sets_and_matches_the_paper():
    perms = max_hamming_permutations(20, 9, seed=3)
    g = _gen(0)
    random_means = [_pairwise(torch.stack([torch.randperm(9, generator=g) for _ in range(20)])).mean()
                    for _ in range(50)]
    assert _pairwise(perms).mean() > max(random_means)
    # Table 4 of the paper: the maximal set of 100 permutations has average distance 8.08 and minimum 2
    hundred = _pairwise(max_hamming_permutations(100, 9))
    assert abs(hundred.mean().item() - 8.08) < 0.005 and hundred.min() == 2


@pytest.mark.parametrize("n,tiles", [(0, 9), (25, 4), (1, 0), (1, 11)])
def test_max_hamming_rejects_bad_input(n, tiles):
    with pytest.raises(UserError):
        max_hamming_permutations(n, tiles)
