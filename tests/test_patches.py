"""The context-prediction patch ops (Doersch, Gupta, Efros, ICCV 2015) against per-image / per-patch loop
references with the same parameters, and their samplers' distributions."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch.testing import assert_close

from selfsup.data.ops import patches as C
from selfsup.data.ops.color import hflip
from selfsup.data.ops.crop import resized_crop, sample_resized_crop
from selfsup.data.ops.tiles import crop_tiles
from selfsup.errors import UserError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ pair geometry


def test_pair_geometry_is_the_papers_and_the_largest_pair_that_fits():
    # the paper's 96 px patches, 48 px gap and 7 px jitter need 2 * 96 + 48 + 2 * 7 = 254 px
    assert C.pair_geometry(255) == (96, 48, 7)
    assert C.pair_geometry(32) == (12, 6, 1) and C.pair_geometry(64) == (24, 12, 2)
    assert C.pair_geometry(96) == (36, 18, 3)
    for size in range(5, 300):
        p, g, j = C.pair_geometry(size)
        assert (g, j) == (round(p * 0.5), round(p * 7 / 96))
        assert 2 * p + g + 2 * j <= size
        q = p + 1  # one pixel more does not fit
        assert 2 * q + round(q * 0.5) + 2 * round(q * 7 / 96) > size
    assert C.pair_geometry(100, patch_frac=0.3, gap_frac=0.2, jitter_frac=0.05) == (30, 6, 2)


@pytest.mark.parametrize("args", [(1,), (32, 0.45), (32, 0.0), (32, 0.6), (32, None, -0.1), (32, None, 0.5, 0.5),
                                  (64, 0.25, 0.1, 0.2)])  # the last: a 6 px jitter in a 2 px gap
def test_pair_geometry_rejects_what_does_not_fit(args):
    with pytest.raises(UserError):
        C.pair_geometry(*args)


# -------------------------------------------------------------------------------------------- sample_patch_pairs


def _pairs_reference(batch, height, width, patch, gap, jitter, seed):
    """The docstring of sample_patch_pairs in plain Python, image by image, from the same draws."""
    g = _gen(seed)
    labels = torch.randint(8, (batch,), generator=g).tolist()
    u = torch.rand((batch, 6), generator=g, dtype=torch.float64).tolist()
    boxes = []
    for label, row in zip(labels, u):
        steps = {0: (-1, -1), 1: (-1, 0), 2: (-1, 1), 3: (0, -1), 4: (0, 1), 5: (1, -1), 6: (1, 0), 7: (1, 1)}[label]
        jit = [int(v * (2 * jitter + 1)) - jitter for v in row[:4]]
        centre, neighbour = [], []
        for axis, full in enumerate((height, width)):
            offset = steps[axis] * (patch + gap) + jit[2 + axis] - jit[axis]
            start = int(row[4 + axis] * (full - patch - abs(offset) + 1))  # the pair's bounding box
            c = start + max(0, -offset)
            centre.append(c)
            neighbour.append(c + offset)
        boxes.append([[*centre, patch, patch], [*neighbour, patch, patch]])
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels)


@pytest.mark.parametrize("shape,geometry", [((32, 32), (12, 6, 1)), ((40, 96), (16, 8, 0)), ((90, 50), (14, 7, 3)),
                                            ((255, 255), (96, 48, 7))])
def test_sample_patch_pairs_matches_the_per_image_reference(shape, geometry):
    boxes = C.sample_patch_pairs(300, *shape, *geometry, generator=_gen(3))
    expected, labels = _pairs_reference(300, *shape, *geometry, seed=3)
    assert boxes.shape == (300, 2, 4) and boxes.dtype == torch.float32
    assert torch.equal(boxes, expected)
    assert torch.equal(C.neighbour_position(boxes), labels)


def test_patch_pairs_lie_in_the_image_with_the_gap_and_jitter_of_their_position():
    size, (p, g, j) = 64, (24, 12, 2)
    boxes = C.sample_patch_pairs(20_000, size, size, p, g, j, generator=_gen(0))
    label = C.neighbour_position(boxes)
    assert ((boxes[..., :2] >= 0) & (boxes[..., :2] + p <= size)).all() and (boxes[..., 2:] == p).all()
    steps = torch.tensor(C.OFFSETS, dtype=torch.float32)[label]  # (B, 2)
    rel = boxes[:, 1, :2] - boxes[:, 0, :2] - steps * (p + g)  # the neighbour's jitter minus the centre's
    # a difference of two independent uniforms on {-2, ..., 2}: triangular on {-4, ..., 4}
    assert rel.min() == -2 * j and rel.max() == 2 * j
    assert abs(rel.mean().item()) < 0.03  # standard error ~0.01
    assert abs(rel.var().item() - 2 * ((2 * j + 1) ** 2 - 1) / 12) < 0.1  # 4.0
    freq = torch.bincount((rel + 2 * j).long().flatten(), minlength=4 * j + 1).double() / rel.numel()
    triangle = torch.tensor([(2 * j + 1 - abs(k)) / (2 * j + 1) ** 2 for k in range(-2 * j, 2 * j + 1)])
    assert (freq - triangle.double()).abs().max() < 0.006
    # along every axis the neighbour moves on, the gap between the patches is g +- 2 j: never closed
    moved = steps != 0
    gaps = ((boxes[:, 1, :2] - boxes[:, 0, :2]).abs() - p)[moved]
    assert gaps.min() == g - 2 * j and gaps.max() == g + 2 * j
    # along the other axes the patches overlap: the neighbour is level with the centre
    assert ((boxes[:, 1, :2] - boxes[:, 0, :2]).abs()[~moved] <= 2 * j).all()


def test_pair_positions_are_uniform_and_the_pair_is_placed_uniformly():
    size, (p, g, j) = 32, (12, 6, 1)
    boxes = C.sample_patch_pairs(40_000, size, size, p, g, j, generator=_gen(1))
    freq = torch.bincount(C.neighbour_position(boxes), minlength=8).double() / len(boxes)
    assert len(freq) == 8 and (freq - 1 / 8).abs().max() < 0.006  # standard error ~0.0017
    # per axis, the pair's bounding box starts uniformly on {0, ..., room - 1}, room = size - its extent + 1
    start = boxes[..., :2].min(1).values.long().flatten()
    room = (size - (boxes[:, 1, :2] - boxes[:, 0, :2]).abs() - p + 1).long().flatten()
    assert room.min() == 1  # a diagonal pair at the widest jitter fills the image: one place only
    checked = 0
    for r in room.unique().tolist():
        s = start[room == r]
        if len(s) < 2000:
            continue
        checked += 1
        freq = torch.bincount(s, minlength=r).double() / len(s)
        assert len(freq) == r and (freq - 1 / r).abs().max() < 4 * (1 / (r * len(s))) ** 0.5, (r, freq)
    assert checked >= 4


def test_sample_patch_pairs_is_seeded_and_moves_to_the_requested_device():
    a = C.sample_patch_pairs(64, 32, 32, 12, 6, 1, generator=_gen(7))
    assert torch.equal(a, C.sample_patch_pairs(64, 32, 32, 12, 6, 1, generator=_gen(7)))
    assert not torch.equal(a, C.sample_patch_pairs(64, 32, 32, 12, 6, 1, generator=_gen(8)))
    assert C.sample_patch_pairs(4, 32, 32, 12, 6, 1, generator=_gen(0), device="meta").device.type == "meta"


@pytest.mark.parametrize("args", [(32, 32, 13, 6, 1), (32, 19, 8, 4, 0), (64, 64, 10, 2, 2), (64, 64, 4, 8, 2)])
def test_sample_patch_pairs_rejects_bad_geometry(args):
    with pytest.raises(UserError):
        C.sample_patch_pairs(1, *args)


def test_neighbour_position_names_the_region_around_the_centre():
    def box(top, left):
        return [top, left, 10, 10]

    centre = box(20, 20)
    neighbours = [box(5, 3), box(9, 22), box(0, 30), box(18, 10), box(22, 30), box(30, 10), box(30, 20), box(33, 33)]
    boxes = torch.tensor([[centre, n] for n in neighbours], dtype=torch.float32)
    assert C.neighbour_position(boxes).tolist() == list(range(8))
    assert C.POSITIONS[C.neighbour_position(boxes)[0]] == "top-left"


def test_patch_pairs_crop_as_slices_and_as_torchvision_resizes():
    x = torch.rand(6, 3, 32, 32, generator=_gen(0))
    boxes = C.sample_patch_pairs(6, 32, 32, 12, 6, 1, generator=_gen(1))
    native = crop_tiles(x, boxes, 12)
    resized = crop_tiles(x, boxes, 16)
    for b in range(6):
        for k in range(2):
            top, left = int(boxes[b, k, 0]), int(boxes[b, k, 1])
            assert_close(native[b, k], x[b, :, top:top + 12, left:left + 12], atol=1e-5, rtol=0)
            assert_close(resized[b, k], TF.resized_crop(x[b], top, left, 12, 12, [16, 16], antialias=False),
                         atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(40, 30), (24, 24), (20, 50)])
@pytest.mark.parametrize("flipped", ["some", "none"])
def test_crop_view_tiles_equals_cropping_the_augmented_views(shape, flipped):
    x = torch.rand(16, 3, *shape, generator=_gen(0))
    view = sample_resized_crop(16, *shape, scale=(0.2, 1.0), generator=_gen(1))
    flips = torch.rand(16, generator=_gen(2)) < 0.5 if flipped == "some" else None
    boxes = C.sample_patch_pairs(16, 32, 32, 12, 6, 1, generator=_gen(3))
    views = resized_crop(x, view, 32)
    views = hflip(views, flips) if flips is not None else views
    out = C.crop_view_tiles(x, view, flips, 32, boxes, 12)
    assert out.shape == (16, 2, 3, 12, 12) and out.is_contiguous()
    assert_close(out, crop_tiles(views, boxes, 12), atol=1e-6, rtol=0)
    for b in range(16):  # and, image by image, the slices of the views
        for k in range(2):
            top, left = int(boxes[b, k, 0]), int(boxes[b, k, 1])
            assert_close(out[b, k], views[b, :, top:top + 12, left:left + 12], atol=1e-6, rtol=0)
    keep = C.sample_kept_channel(16, 2, generator=_gen(4))  # one channel of each tile: the same pixels
    one = C.crop_view_tiles(x, view, flips, 32, boxes, 12, channels=keep)
    assert one.shape == (16, 2, 1, 12, 12) and one.is_contiguous()
    for b in range(16):
        for k in range(2):
            assert_close(one[b, k, 0], out[b, k, keep[b, k]], atol=1e-6, rtol=0)


def test_crop_view_tiles_samples_uint8_images_as_their_float_values():
    x = torch.randint(0, 256, (6, 3, 30, 30), dtype=torch.uint8, generator=_gen(0))
    view = sample_resized_crop(6, 30, 30, scale=(0.2, 1.0), generator=_gen(1))
    boxes = C.sample_patch_pairs(6, 32, 32, 12, 6, 1, generator=_gen(3))
    keep = C.sample_kept_channel(6, 2, generator=_gen(4))
    for channels in (None, keep):
        out = C.crop_view_tiles(x, view, None, 32, boxes, 12, channels=channels)
        assert out.dtype == torch.float32
        assert_close(out, C.crop_view_tiles(x.float(), view, None, 32, boxes, 12, channels=channels), atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------- colour dropping


def _drop_reference(patches, keep, noise, scale):
    """Patch by patch in float64: the kept channel as it is, the others noise * scale * std(kept channel)."""
    flat, out = patches.double().reshape(-1, *patches.shape[-3:]), []
    channels = flat.shape[1]
    noise = (noise.double().reshape(len(flat), channels - 1, *flat.shape[-2:]) if noise is not None
             else torch.zeros(len(flat), channels - 1, *flat.shape[-2:], dtype=torch.float64))
    for patch, k, n in zip(flat, keep.flatten().tolist(), noise):
        kept = patch[k]
        std = math.sqrt(((kept - kept.mean()) ** 2).mean().item())
        dropped = [c for c in range(channels) if c != k]  # in channel order, one noise map each
        out.append(torch.stack([patch[c] if c == k else n[dropped.index(c)] * scale * std for c in range(channels)]))
    return torch.stack(out).view(patches.shape)


@pytest.mark.parametrize("scale", [0.01, 0.5])
@pytest.mark.parametrize("with_noise", [True, False])
def test_drop_channels_matches_the_per_patch_reference(scale, with_noise):
    patches = torch.rand(5, 2, 3, 7, 7, generator=_gen(0))
    keep = C.sample_kept_channel(5, 2, generator=_gen(1))
    noise = C.sample_noise((5, 2, 2, 7, 7), generator=_gen(2)) if with_noise else None
    out = C.drop_channels(patches, keep, noise, scale)
    assert_close(out.double(), _drop_reference(patches, keep, noise, scale), atol=1e-6, rtol=1e-5)
    for b in range(5):
        for t in range(2):
            assert torch.equal(out[b, t, keep[b, t]], patches[b, t, keep[b, t]])


@pytest.mark.parametrize("scale", [0.01, 0.5])
@pytest.mark.parametrize("with_noise", [True, False])
def test_dropped_patches_from_the_kept_channel_equal_dropping_then_standardising(scale, with_noise):
    patches = torch.rand(5, 2, 3, 7, 7, generator=_gen(0)) * torch.rand(5, 2, 3, 1, 1, generator=_gen(3))
    patches[1, 0] = 0.3  # a constant patch: its kept channel has no variance, and without noise it stays 0
    keep = C.sample_kept_channel(5, 2, generator=_gen(1))
    noise = C.sample_noise((5, 2, 2, 7, 7), generator=_gen(2)) if with_noise else None
    kept = torch.stack([torch.stack([patches[b, t, keep[b, t]] for t in range(2)]) for b in range(5)]).unsqueeze(2)
    out = C.dropped_patches(kept, keep, noise, scale)
    expected = C.standardise_patches(_drop_reference(patches, keep, noise, scale)).float()  # float64 reference
    assert out.shape == (5, 2, 3, 7, 7)
    assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert out[1, 0].abs().max() < 1e-3


def test_kept_channels_are_uniform_and_independent_between_the_patches_of_a_pair():
    keep = C.sample_kept_channel(30_000, 2, 3, generator=_gen(0))
    assert keep.shape == (30_000, 2) and keep.dtype == torch.int64
    for column in keep.unbind(1):
        freq = torch.bincount(column, minlength=3).double() / len(column)
        assert len(freq) == 3 and (freq - 1 / 3).abs().max() < 0.01
    assert abs((keep[:, 0] == keep[:, 1]).double().mean().item() - 1 / 3) < 0.01
    noise = C.sample_noise((4000, 3, 4, 4), generator=_gen(1))
    assert abs(noise.mean().item()) < 0.01 and abs(noise.std().item() - 1) < 0.01
    assert torch.equal(noise, C.sample_noise((4000, 3, 4, 4), generator=_gen(1)))


# ------------------------------------------------------------------------------------- projection, standardising


def test_project_chroma_removes_the_green_magenta_axis_pixel_by_pixel():
    x = torch.rand(2, 3, 3, 4, 5, generator=_gen(0), dtype=torch.float64)
    a = torch.tensor([-1.0, 2.0, -1.0], dtype=torch.float64)
    matrix = torch.eye(3, dtype=torch.float64) - torch.outer(a, a) / a.dot(a)  # B = I - a^T a / (a a^T)
    out = C.project_chroma(x)
    pixels = x.movedim(-3, -1).reshape(-1, 3)
    expected = torch.stack([matrix @ p for p in pixels]).view(*x.shape[:-3], 4, 5, 3).movedim(-1, -3)
    assert_close(out, expected, atol=1e-12, rtol=0)
    assert_close(torch.einsum("c,...chw->...hw", a, out), torch.zeros(2, 3, 4, 5, dtype=torch.float64),
                 atol=1e-12, rtol=0)
    grey = torch.rand(1, 1, 4, 4, dtype=torch.float64).expand(1, 3, 4, 4)
    assert_close(C.project_chroma(grey), grey, atol=1e-12, rtol=0)


def test_standardise_patches_matches_the_per_patch_reference():
    patches = torch.rand(3, 2, 3, 6, 6, generator=_gen(0)) * torch.rand(3, 2, 3, 1, 1, generator=_gen(1))
    patches[0, 1, 2] = 0.7  # a constant channel in a patch that is not constant
    out = C.standardise_patches(patches)
    flat, expected = patches.double().reshape(-1, 3, 6, 6), []
    for patch in flat:
        centred = torch.stack([c - c.mean() for c in patch])
        expected.append(centred / math.sqrt((centred**2).mean().item() + 1e-10))
    assert_close(out.double(), torch.stack(expected).view(out.shape), atol=1e-5, rtol=1e-5)
    assert out[0, 1, 2].abs().max() < 1e-5


def test_a_constant_patch_stays_near_zero():
    # float32 rounding leaves ~1e-8 after centring; the eps of 1e-5 keeps it from being blown up to unit scale
    constant = torch.full((4, 3, 8, 8), 0.4) + torch.randn(4, 3, 8, 8, generator=_gen(0)) * 1e-8
    out = C.standardise_patches(constant)
    assert torch.isfinite(out).all() and out.abs().max() < 1e-2
