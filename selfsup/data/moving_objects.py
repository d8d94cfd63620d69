"""A generated video set: one object per clip, of one of four shapes, moving in one of six ways, so that a probe can
ask for appearance (``moving-objects``: labels are the shapes) or for motion (``moving-objects:motion``).

Each clip shows a shape (:data:`SHAPES`) in a colour from :data:`PALETTE`, of random size, on a background of a
tinted grey, a random plane wave and fixed per-pixel noise (the same in every frame, so that only the object moves),
following one of :data:`MOTIONS`:

* ``static``: it stays where it is;
* ``horizontal`` / ``vertical``: it crosses ``travel`` of the side at constant speed, in the ``direction`` drawn;
* ``diagonal``: it moves ``2 travel`` along each axis over the clip, bouncing off the walls (the bouncing-ball
  videos of Srivastava et al., "Unsupervised Learning of Video Representations using LSTMs", ICML 2015);
* ``circular``: it goes three quarters round a circle of radius ``travel / 2`` from angle ``phase``;
* ``zoom``: it stays put and grows (or shrinks) from 0.4 to 1.6 times its size (1.6 to 0.4).

Frame ``f`` of ``T`` shows the clip at time ``t = (f + 1/2) / T`` in (0, 1). Everything is rendered at once for all
clips and frames from coordinate grids (an anti-aliased edge one pixel wide), with parameters drawn from a seeded
``torch.Generator``: a seed fixes the set. Shapes and motions are balanced and crossed (every shape moves every way
about equally often), and the train/test split (80/20) is stratified by the pair, so both label sets split alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from selfsup.data.sources import Dataset, ImageSet, stratified_split
from selfsup.errors import UserError

SHAPES = ("circle", "square", "triangle", "cross")
MOTIONS = ("static", "horizontal", "vertical", "diagonal", "circular", "zoom")
#: red, green, blue, yellow, magenta, cyan, orange, white (whole levels out of 255: no rounding at half a level)
PALETTE = torch.tensor([[230, 25, 25], [25, 205, 50], [40, 75, 240], [240, 230, 25], [230, 50, 205], [25, 215, 230],
                        [255, 140, 15], [248, 248, 248]]) / 255
RADIUS = (0.12, 0.18)  # of the side: the object lies within this distance of its centre (at scale 1)
TRAVEL = (0.3, 0.5)  # of the side: how far a horizontal or vertical object goes over the clip
ZOOM = 0.6  # a zooming object's scale goes from 1 - ZOOM to 1 + ZOOM (or back)
SWEEP = 1.5 * math.pi  # the angle a circling object covers over the clip
NOISE = 0.05  # amplitude of the background's per-pixel noise


@dataclass
class Clips:
    """Per-clip parameters (first dimension N). Positions are fractions of the side, x to the right, y down."""

    shape: torch.Tensor  # int64, index into SHAPES
    motion: torch.Tensor  # int64, index into MOTIONS
    colour: torch.Tensor  # (N, 3) RGB in [0, 1], a PALETTE row
    radius: torch.Tensor  # in RADIUS
    place: torch.Tensor  # (N, 2) in [0, 1]: where the path lies within the room the motion leaves it
    travel: torch.Tensor  # in TRAVEL
    direction: torch.Tensor  # (N, 2) of +-1: which way along x and y (x alone: circling and zoom)
    phase: torch.Tensor  # in [0, 2 pi): a circling object's starting angle
    background: torch.Tensor  # (N, 3) base colour, tinted grey
    wave: torch.Tensor  # (N, 4): amplitude, x and y frequency (cycles per side), phase of the background's wave
    noise: torch.Tensor  # (N, 3, S, S) in [-1, 1]: the background's fixed noise


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, *shape, generator=g, device=g.device)


def sample_clips(n: int, size: int, g: torch.Generator) -> Clips:
    """Parameters of ``n`` clips drawn from ``g`` (on its device); shapes exactly balanced (when ``n`` is a multiple
    of 4), motions balanced within one, and every (shape, motion) pair within one of the others' counts."""
    k = torch.arange(n, device=g.device)
    order = torch.randperm(n, generator=g, device=g.device)
    shape, motion = (k % len(SHAPES))[order], (k // len(SHAPES) % len(MOTIONS))[order]
    colour = PALETTE.to(g.device)[torch.randint(len(PALETTE), (n,), generator=g, device=g.device)]
    direction = torch.randint(2, (n, 2), generator=g, device=g.device) * 2.0 - 1.0
    grey, tint = _uniform(n, 0.25, 0.6, g, 1), _uniform(n, -0.06, 0.06, g, 3)
    angle, cycles = _uniform(n, 0.0, math.pi, g), _uniform(n, 1.0, 3.0, g)
    wave = torch.stack([_uniform(n, 0.04, 0.12, g), cycles * angle.cos(), cycles * angle.sin(),
                        _uniform(n, 0.0, 2 * math.pi, g)], 1)
    return Clips(shape, motion, colour, _uniform(n, *RADIUS, g), _uniform(n, 0.0, 1.0, g, 2),
                 _uniform(n, *TRAVEL, g), direction, _uniform(n, 0.0, 2 * math.pi, g), grey + tint, wave,
                 _uniform(n, -1.0, 1.0, g, 3, size, size))


def times(frames: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The clip time each frame shows: ``(f + 1/2) / frames``."""
    return (torch.arange(frames, device=device) + 0.5) / frames


def trajectory(c: Clips, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres ``(N, T, 2)`` (x, y as fractions of the side) and scales ``(N, T)`` of every clip's object."""
    t = times(frames, c.radius.device)[None]  # (1, T)
    r, travel, px, py = c.radius[:, None], c.travel[:, None], c.place[:, :1], c.place[:, 1:]
    sx, sy = c.direction[:, :1], c.direction[:, 1:]

    def span(room: torch.Tensor, p: torch.Tensor) -> torch.Tensor:  # a point in [room, 1 - room]
        return room + p * (1 - 2 * room)

    def fold(z: torch.Tensor) -> torch.Tensor:  # bounce between the walls r and 1 - r
        width = 1 - 2 * r
        return r + width - ((z - r) % (2 * width) - width).abs()

    still = torch.zeros_like(t)
    linear = (t - 0.5) * travel  # from -travel/2 to travel/2 over the clip
    orbit, big = travel / 2, r * (1 + ZOOM)
    centre, angle = span(orbit + r, c.place), c.phase[:, None] + sx * SWEEP * t
    xs = {"static": span(r, px) + still, "horizontal": span(r + travel / 2, px) + sx * linear,
          "vertical": span(r, px) + still, "diagonal": fold(span(r, px) + sx * 2 * travel * t),
          "circular": centre[:, :1] + orbit * angle.cos(), "zoom": span(big, px) + still}
    ys = {"static": span(r, py) + still, "horizontal": span(r, py) + still,
          "vertical": span(r + travel / 2, py) + sy * linear, "diagonal": fold(span(r, py) + sy * 2 * travel * t),
          "circular": centre[:, 1:] + orbit * angle.sin(), "zoom": span(big, py) + still}
    pick = c.motion[:, None]
    x = sum(torch.where(pick == i, xs[m], 0.0) for i, m in enumerate(MOTIONS))
    y = sum(torch.where(pick == i, ys[m], 0.0) for i, m in enumerate(MOTIONS))
    scale = torch.where(pick == MOTIONS.index("zoom"), 1 + sx * ZOOM * 2 * (t - 0.5), 1.0)
    return torch.stack([x, y], -1), scale


#: each shape as a level function of the offset from its centre, positively homogeneous of degree 1 (so ``level <=
#: R`` is the shape of radius ``R``), with the shape inside the unit disc: circle, square, triangle (pointing up,
#: centroid at the centre), cross (arms 0.3 wide)
LEVELS = (
    lambda dx, dy: dx.hypot(dy) / 0.9,
    lambda dx, dy: torch.maximum(dx.abs(), dy.abs()) / 0.7,
    lambda dx, dy: torch.maximum(2 * dy, math.sqrt(3) * dx.abs() - dy),
    lambda dx, dy: torch.minimum(torch.maximum(dx.abs() / 0.3, dy.abs()),
                                 torch.maximum(dx.abs(), dy.abs() / 0.3)) / 0.95,
)


def render(c: Clips, frames: int, size: int) -> torch.Tensor:
    """``(N, frames, 3, size, size)`` uint8: every clip's frames, on the parameters' device.

    Pixel centres sit at ``(i + 1/2) / size``; the object covers a pixel by ``clamp(R - level + 1/2, 0, 1)`` with
    ``R`` its radius times scale in pixels and ``level`` its shape's :data:`LEVELS` of the offset in pixels; the
    background is ``background + a sin(2 pi (fx x + fy y) + phase) + NOISE noise``, clipped to [0, 1].
    """
    centre, scale = trajectory(c, frames)
    axis = (torch.arange(size, device=c.radius.device) + 0.5) / size
    dx = (axis[None, None, None, :] - centre[..., :1, None]) * size  # (N, T, 1, S)
    dy = (axis[None, None, :, None] - centre[..., 1:, None]) * size  # (N, T, S, 1)
    dx, dy = torch.broadcast_tensors(dx, dy)
    level = torch.empty_like(dx)
    for k, fn in enumerate(LEVELS):  # one pass per shape over the clips of that shape
        sel = c.shape == k
        level[sel] = fn(dx[sel], dy[sel])
    cover = (c.radius[:, None, None, None] * scale[..., None, None] * size - level + 0.5).clamp(0, 1)[:, :, None]
    a, fx, fy, phase = (w[:, None, None, None] for w in c.wave.unbind(1))
    wave = a * torch.sin(2 * math.pi * (fx * axis[None, None, None, :] + fy * axis[None, None, :, None]) + phase)
    ground = (c.background[:, :, None, None] + wave + NOISE * c.noise).clamp(0, 1)[:, None]  # (N, 1, 3, S, S)
    out = ground * (1 - cover) + c.colour[:, None, :, None, None] * cover
    return (out * 255).round().to(torch.uint8)


def moving_objects(clips_per_class: int = 150, frames: int = 8, size: int = 32, seed: int = 0,
                   labels: str = "object") -> Dataset:
    """``clips_per_class`` clips of every shape (:data:`SHAPES`), ``frames`` frames of ``size`` px each, as a
    :class:`Dataset` split 80/20 (stratified by shape and motion): ``images`` are the middle frames
    (``frames[:, T // 2]``), fields ``frames`` ``(N, T, 3, S, S)`` uint8 and ``motion`` (N,) int64, labels the shapes
    (``labels="object"``) or the motions (``labels="motion"``); the same clips either way."""
    if labels not in ("object", "motion"):
        raise UserError(f"moving objects are labelled by 'object' or 'motion', not '{labels}'")
    if clips_per_class < 1 or frames < 1 or size < 4:
        raise UserError(f"moving objects need at least 1 clip per class, 1 frame and 4 px (got {clips_per_class}, "
                        f"{frames}, {size})")
    g = torch.Generator().manual_seed(seed)
    clips = sample_clips(clips_per_class * len(SHAPES), size, g)
    video = render(clips, frames, size)
    target, classes = (clips.shape, SHAPES) if labels == "object" else (clips.motion, MOTIONS)
    full = ImageSet(video[:, frames // 2].contiguous(), target, list(classes),
                    fields={"frames": video, "motion": clips.motion})
    train, test = stratified_split(clips.shape * len(MOTIONS) + clips.motion, 0.2, seed)
    name = "moving-objects" + (":motion" if labels == "motion" else "")
    train_set = full.subset(train)
    return Dataset(name, pretrain=train_set, train=train_set, test=full.subset(test))
