"""The generated moving-objects videos: a per-clip reference renderer, parameter distributions, balance, splits,
motion that does what its label says, and a short training run on the middle frames."""

import csv
import dataclasses
import math
import time

import numpy as np
import pytest
import torch

import selfsup
import selfsup.data.moving_objects as mo
from selfsup.data import load_data
from selfsup.data.moving_objects import MOTIONS, SHAPES, Clips, moving_objects, render, sample_clips
from selfsup.errors import UserError


def clips(n: int, size: int = 32, seed: int = 0) -> Clips:
    return sample_clips(n, size, torch.Generator().manual_seed(seed))


def only(c: Clips, idx) -> Clips:
    return Clips(**{f.name: getattr(c, f.name)[idx] for f in dataclasses.fields(c)})


def reference_centre(c: Clips, i: int, t: float) -> tuple[float, float, float]:
    """Centre (x, y) and scale of clip ``i`` at time ``t``, from the module docstring, one clip at a time."""
    r, travel = float(c.radius[i]), float(c.travel[i])
    px, py = c.place[i].tolist()
    sx, sy = c.direction[i].tolist()
    motion = MOTIONS[int(c.motion[i])]

    def at(room, p):
        return room + p * (1 - 2 * room)

    def bounce(z):  # reflect off the walls r and 1 - r, as often as it takes
        lo, hi = r, 1 - r
        while not lo <= z <= hi:
            z = 2 * hi - z if z > hi else 2 * lo - z
        return z

    if motion == "static":
        return at(r, px), at(r, py), 1.0
    if motion == "horizontal":
        return at(r + travel / 2, px) + sx * travel * (t - 0.5), at(r, py), 1.0
    if motion == "vertical":
        return at(r, px), at(r + travel / 2, py) + sy * travel * (t - 0.5), 1.0
    if motion == "diagonal":
        return bounce(at(r, px) + sx * 2 * travel * t), bounce(at(r, py) + sy * 2 * travel * t), 1.0
    if motion == "circular":
        rho = travel / 2
        angle = float(c.phase[i]) + sx * 1.5 * math.pi * t
        return at(rho + r, px) + rho * math.cos(angle), at(rho + r, py) + rho * math.sin(angle), 1.0
    big = r * 1.6
    return at(big, px), at(big, py), 1 + sx * 0.6 * (2 * t - 1)


def reference_inside(shape: str, dx: float, dy: float) -> float:
    """How far out (pixels, scaled by the shape's size) a point lies, written per shape."""
    if shape == "circle":
        return math.sqrt(dx * dx + dy * dy) / 0.9
    if shape == "square":
        return max(abs(dx), abs(dy)) / 0.7
    if shape == "triangle":  # equilateral, circumradius 1, apex up (y down): below the base, inside both flanks
        return max(2 * dy, math.sqrt(3) * abs(dx) - dy)
    return min(max(abs(dx) / 0.3, abs(dy)), max(abs(dx), abs(dy) / 0.3)) / 0.95


def reference_clip(c: Clips, i: int, frames: int, size: int) -> np.ndarray:
    """Clip ``i`` rendered with plain loops in float64."""
    out = np.zeros((frames, 3, size, size))
    amp, fx, fy, phase = c.wave[i].tolist()
    colour = c.colour[i].tolist()
    for f in range(frames):
        cx, cy, scale = reference_centre(c, i, (f + 0.5) / frames)
        radius = float(c.radius[i]) * scale * size
        for yi in range(size):
            for xi in range(size):
                x, y = (xi + 0.5) / size, (yi + 0.5) / size
                level = reference_inside(SHAPES[int(c.shape[i])], (x - cx) * size, (y - cy) * size)
                cover = min(1.0, max(0.0, radius - level + 0.5))
                wave = amp * math.sin(2 * math.pi * (fx * x + fy * y) + phase)
                for ch in range(3):
                    ground = float(c.background[i, ch]) + wave + 0.05 * float(c.noise[i, ch, yi, xi])
                    ground = min(1.0, max(0.0, ground))
                    out[f, ch, yi, xi] = ground * (1 - cover) + colour[ch] * cover
    return np.round(out * 255)


def test_the_batched_renderer_matches_a_per_clip_reference():
    c = clips(48, size=16, seed=3)
    picked = [int(torch.nonzero((c.motion == m) & (c.shape == m % 4))[0]) for m in range(len(MOTIONS))]
    picked += [int(torch.nonzero((c.motion == 3) & (c.shape == s))[0]) for s in range(4)]  # every shape bouncing
    got = render(only(c, torch.tensor(picked)), 5, 16)
    for row, i in enumerate(picked):
        diff = np.abs(got[row].numpy().astype(float) - reference_clip(c, i, 5, 16))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (MOTIONS[int(c.motion[i])], diff.max())


def test_parameters_are_drawn_as_documented():
    n = 4800
    c = clips(n, size=4)
    assert torch.equal(torch.bincount(c.shape), torch.full((4,), n // 4))
    assert torch.equal(torch.bincount(c.motion), torch.full((6,), n // 6))
    assert torch.equal(torch.bincount(c.shape * 6 + c.motion), torch.full((24,), n // 24))  # crossed
    rows = (c.colour[:, None] == mo.PALETTE[None]).all(-1)
    assert rows.sum(1).eq(1).all()  # every colour is a palette row
    assert (rows.float().mean(0) - 1 / len(mo.PALETTE)).abs().max() < 0.02
    for values, (lo, hi) in [(c.radius, mo.RADIUS), (c.travel, mo.TRAVEL), (c.place, (0, 1)),
                             (c.phase, (0, 2 * math.pi)), (c.noise, (-1, 1))]:
        assert lo <= values.min() and values.max() <= hi
        assert abs(values.mean() - (lo + hi) / 2) < 0.02 * (hi - lo)
        assert abs(values.std() - (hi - lo) / math.sqrt(12)) < 0.02 * (hi - lo)  # uniform, not squeezed
    assert set(c.direction.unique().tolist()) == {-1.0, 1.0} and c.direction.mean().abs() < 0.05
    grey = c.background.mean(1)
    assert 0.25 - 0.06 <= grey.min() and grey.max() <= 0.6 + 0.06
    assert ((c.wave[:, 1] ** 2 + c.wave[:, 2] ** 2).sqrt() - 2).abs().max() <= 1 + 1e-5  # 1 to 3 cycles per side
    # motions and shapes do not follow the order of the clips: no pattern in the index
    assert not torch.equal(c.shape[:24], torch.arange(24) % 4)


def cover(c: Clips, frames: int, size: int) -> torch.Tensor:
    """The object's coverage (N, T, S, S) in [0, 1], from two renders that differ in its colour alone."""
    white = render(dataclasses.replace(c, colour=torch.ones_like(c.colour)), frames, size).double()
    black = render(dataclasses.replace(c, colour=torch.zeros_like(c.colour)), frames, size).double()
    return ((white - black) / 255).mean(2)


def centroids(cov: torch.Tensor) -> torch.Tensor:
    """(N, T, 2) x, y in pixels (pixel centres at i + 1/2)."""
    axis = torch.arange(cov.shape[-1], dtype=torch.double) + 0.5
    mass = cov.sum((-1, -2))
    return torch.stack([(cov * axis).sum((-1, -2)) / mass, (cov * axis[:, None]).sum((-1, -2)) / mass], -1)


def test_objects_move_as_their_motion_says():
    size, frames = 40, 8
    c = clips(120, size)
    cov = cover(c, frames, size)
    pos, area = centroids(cov), cov.sum((-1, -2))
    steps = pos.diff(dim=1)  # (N, T-1, 2) pixels per frame
    tol = 0.35  # pixels: pixelisation of the anti-aliased edge
    for i in range(len(c.motion)):
        motion, sx, sy = MOTIONS[int(c.motion[i])], *c.direction[i].tolist()
        travel, s = float(c.travel[i]) * size, steps[i]
        if motion in ("static", "zoom"):
            assert s.abs().max() < tol, (motion, s)
        if motion == "static":
            assert (area[i] - area[i, 0]).abs().max() < 1e-9
        if motion == "horizontal":
            assert torch.allclose(s[:, 0], torch.full_like(s[:, 0], sx * travel / frames), atol=tol) and \
                s[:, 1].abs().max() < tol
        if motion == "vertical":
            assert torch.allclose(s[:, 1], torch.full_like(s[:, 1], sy * travel / frames), atol=tol) and \
                s[:, 0].abs().max() < tol
        if motion == "diagonal":  # 2 travel along each axis per clip, folded at the walls
            speed = 2 * travel / frames
            assert s.abs().max() < speed + tol
            straight = ((s.abs() - speed).abs() < tol).all(1)  # steps without a bounce on either axis
            assert straight.sum() >= 2 and (s[straight].sign() == s[straight][:1].sign()).all(1).any()
        if motion == "circular":  # equal chords, turning by the same angle each frame
            turn = torch.atan2(s[:-1, 0] * s[1:, 1] - s[:-1, 1] * s[1:, 0], (s[:-1] * s[1:]).sum(1))
            step = sx * 1.5 * math.pi / frames
            assert (turn - step).abs().max() < 0.12, (turn, step)
            chord = 2 * travel / 2 * math.sin(abs(step) / 2)
            assert (s.norm(dim=1) - chord).abs().max() < tol
        if motion == "zoom":  # area grows (shrinks) with the square of the scale 1 +- 0.6 (2t - 1)
            t = (torch.arange(frames) + 0.5) / frames
            scale = 1 + sx * 0.6 * (2 * t - 1)
            ratio, want = area[i] / area[i, frames // 2], (scale / scale[frames // 2]) ** 2
            big = scale >= 0.7  # smaller objects are a pixel or two across: their sampled area is rough
            assert (ratio.log() - want.log())[big].abs().max() < 0.25, (ratio, want)
            assert (area[i].diff() * sx > 0).all()


def test_static_clips_hold_still_and_moving_ones_do_not():
    ds = moving_objects(clips_per_class=12, frames=6, size=24)
    for s in (ds.train, ds.test):
        frames, motion = s.fields["frames"], s.fields["motion"]
        same = (frames == frames[:, :1]).flatten(1).all(1)
        assert torch.equal(same, motion == MOTIONS.index("static"))


def test_sets_shapes_labels_splits_and_determinism():
    ds = moving_objects(clips_per_class=30, frames=6, size=20, seed=1)
    assert ds.name == "moving-objects" and ds.evaluable and ds.train.classes == list(SHAPES)
    assert (len(ds.train), len(ds.test)) == (96, 24)
    for s in (ds.train, ds.test):
        frames = s.fields["frames"]
        assert frames.shape == (len(s), 6, 3, 20, 20) and frames.dtype == torch.uint8
        assert s.images.shape == (len(s), 3, 20, 20) and torch.equal(s.images, frames[:, 3])
        assert s.fields["motion"].dtype == torch.int64 and s.labels.dtype == torch.int64
    assert torch.equal(ds.train.labels.bincount(), torch.full((4,), 24))
    assert torch.equal(ds.test.labels.bincount(), torch.full((4,), 6))
    assert torch.equal(ds.test.fields["motion"].bincount(), torch.full((6,), 4))
    assert ds.pretrain is ds.train

    again, other = moving_objects(30, 6, 20, seed=1), moving_objects(30, 6, 20, seed=2)
    assert torch.equal(again.train.fields["frames"], ds.train.fields["frames"])
    assert torch.equal(again.test.labels, ds.test.labels)
    assert not torch.equal(other.train.fields["frames"], ds.train.fields["frames"])

    motion = moving_objects(30, 6, 20, seed=1, labels="motion")  # the same clips, labelled by their motion
    assert motion.name == "moving-objects:motion" and motion.train.classes == list(MOTIONS)
    assert torch.equal(motion.train.fields["frames"], ds.train.fields["frames"])
    assert torch.equal(motion.train.labels, ds.train.fields["motion"])
    assert torch.equal(motion.train.labels.bincount(), torch.full((6,), 16))
    with pytest.raises(UserError, match="'object' or 'motion'"):
        moving_objects(labels="colour")


def test_load_data_specs_and_default_generation_is_quick():
    torch.set_num_threads(1)
    started = time.perf_counter()
    ds = load_data("moving-objects")
    seconds = time.perf_counter() - started
    assert seconds < 4, seconds  # measured ~0.25 s on one core; the budget is 2 s
    assert ds.native_size == 32 and ds.pretrain.fields["frames"].shape == (480, 8, 3, 32, 32)
    assert len(ds.test) == 120 and ds.num_classes == 4
    ds = load_data("moving-objects:motion", image_size=16)
    assert ds.native_size == 16 and ds.num_classes == 6 and ds.train.classes == list(MOTIONS)


def test_an_image_method_trains_on_the_middle_frames(tmp_path):
    cfg = selfsup.TrainConfig(method="rotnet", data="moving-objects", steps=6, batch_size=32, image_size=16,
                              device="cpu", log_every=2)
    run = selfsup.train(cfg, tmp_path / "run", show_progress=False, evaluate=False)
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "run" / "metrics.csv"))]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert run.data.pretrain.fields["frames"].shape == (480, 8, 3, 16, 16)  # rendered at --image-size
