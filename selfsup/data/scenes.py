"""Generated 2.5D scenes with captions and dense labels, shipped as code (``load_data("scenes")``).

A few simple objects (the :data:`SHAPES`, each in a :data:`PALETTE` colour and one of two :data:`SIZES`) stand on
a ground plane and are seen by an orthographic camera looking down at :data:`ELEVATION`, in the spirit of CLEVR
(Johnson et al., CLEVR: A Diagnostic Dataset for Compositional Language and Elementary Visual Reasoning, CVPR 2017).
Every ray meets the shapes analytically, so each pixel has an exact depth and surface normal; the image is their
Lambertian shading, and the fields (see :class:`selfsup.data.sources.ImageSet`) hold the dense targets of
multi-task transfer (Zamir et al., Taskonomy: Disentangling Task Transfer Learning, CVPR 2018): ``depth``,
``normals``, ``contours``, ``segmentation``, ``boxes`` / ``box_labels``, and a ``text`` caption naming every visible
object (plus ``instances``: 0 ground, j = the object of box row j - 1). The whole batch is rendered at once over
images x pixels, one pass per object slot, shape and size.

World space: x right, y up, z toward the camera; the ground is y = 0. Camera space (``normals``): x right, y up, z
toward the viewer, so every visible surface's normal has z > 0.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from selfsup.data.sources import Dataset, ImageSet
from selfsup.data.text import TEXT_LENGTH, encode_texts
from selfsup.errors import UserError

SHAPES = ("sphere", "cube", "cylinder", "cone")  # probe label k, segmentation / box class k + 1
SEG_CLASSES = ("background", *SHAPES)  # the names of the segmentation ids
PALETTE = {"red": (0.80, 0.16, 0.14), "green": (0.18, 0.62, 0.22), "blue": (0.16, 0.32, 0.86),
           "yellow": (0.94, 0.84, 0.18), "purple": (0.56, 0.22, 0.74), "cyan": (0.18, 0.78, 0.80),
           "orange": (0.95, 0.52, 0.12), "gray": (0.52, 0.52, 0.52)}
COLORS = tuple(PALETTE)
SIZES = ("small", "large")
SCALE = (0.2, 0.32)  # per size, the scale s (world units) of the shapes' dimensions (CUBE, CYLINDER, CONE)
GROUND = (0.80, 0.78, 0.74)
AMBIENT = 0.3  # shade = albedo * (AMBIENT + (1 - AMBIENT) * max(0, n . light))
ELEVATION = math.radians(35.0)  # the camera looks down at this angle
LIGHT_ELEVATION = math.radians(50.0)
LIGHT_AZIMUTH = math.radians(60.0)  # the light's azimuth is uniform in [-this, this] (0: from behind the camera)
HALF_VIEW = 1.08  # half the frame's side in world units
LOOK_AT = (0.0, 0.28, 0.0)
DISTANCE = 4.0  # from the rays' origins to LOOK_AT along the view direction
GRID, SPACING, JITTER = 3, 0.62, 0.05  # objects stand in distinct cells of a GRID x GRID ground grid
YAW = (math.radians(5.0), math.radians(85.0))  # cubes' turn about the vertical, away from face-on
#: the shapes' dimensions in units of their size's scale s (a sphere's radius is s): a cube's half side; a cylinder's
#: radius and height; a cone's base radius and height
CUBE, CYLINDER, CONE = 0.8, (0.8, 1.6), (1.0, 1.8)

_s, _c = math.sin(ELEVATION), math.cos(ELEVATION)
DIRECTION = (0.0, -_s, -_c)  # the rays' direction, unit
UP = (0.0, _c, -_s)  # the image's upward axis
TOWARD = (0.0, _s, _c)  # camera-space z: toward the viewer
REACH = max(1.0, CUBE * math.sqrt(2), CYLINDER[0], CONE[0])  # an object's largest reach from its axis (x scale)
#: depth range mapped to 0..255: a bound on the nearest object point (highest, nearest the camera) and the ground at
#: the frame's top edge
NEAR = DISTANCE - (2 * SCALE[1] - LOOK_AT[1]) * _s - (SPACING * (GRID // 2) + JITTER + REACH * SCALE[1]) * _c
FAR = (LOOK_AT[1] + HALF_VIEW * _c + DISTANCE * _s) / _s


@dataclass
class SceneParams:
    """Per-scene parameters, ``(N,)`` or ``(N, M)`` for M object slots, of which the first ``count`` are used."""

    count: Tensor  # int64 (N,) objects in the scene, 1..M
    shape: Tensor  # int64 (N, M) index into SHAPES
    color: Tensor  # int64 (N, M) index into COLORS
    size: Tensor  # int64 (N, M) index into SIZES
    x: Tensor  # float (N, M) ground position of the object's centre
    z: Tensor
    yaw: Tensor  # float (N, M) turn about the vertical (cubes)
    light: Tensor  # float (N,) the light's azimuth

    @property
    def active(self) -> Tensor:
        return torch.arange(self.shape.shape[1], device=self.shape.device) < self.count[:, None]

    def to(self, device: torch.device | str | None, dtype: torch.dtype = torch.float32) -> SceneParams:
        """On ``device`` (None: where it is), the positions and angles as ``dtype``."""
        def move(t: Tensor) -> Tensor:
            return t.to(device, dtype) if t.is_floating_point() else t.to(device)

        return SceneParams(**{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def slice(self, start: int, stop: int) -> SceneParams:
        return SceneParams(**{f.name: getattr(self, f.name)[start:stop] for f in dataclasses.fields(self)})


def sample_scenes(n: int, max_objects: int = 3, generator: torch.Generator | None = None) -> SceneParams:
    """Draw ``n`` scenes: 1..``max_objects`` objects (uniform), each of a uniform shape, colour and size, in distinct
    cells of the ground grid (a uniform random choice) jittered by up to :data:`JITTER`, cubes turned uniformly in
    :data:`YAW`, and a light azimuth uniform in +-:data:`LIGHT_AZIMUTH`. Drawn on the generator's device."""
    if not 1 <= max_objects <= GRID * GRID:
        raise UserError(f"max_objects must be in 1..{GRID * GRID}, got {max_objects}")
    device = generator.device if generator is not None else None

    def ints(high: int, *shape: int) -> Tensor:
        return torch.randint(0, high, shape, generator=generator, device=device)

    def floats(low: float, high: float, *shape: int) -> Tensor:
        return torch.rand(shape, generator=generator, device=device, dtype=torch.float64) * (high - low) + low

    m = max_objects
    count = ints(m, n) + 1
    shape, color, size = ints(len(SHAPES), n, m), ints(len(COLORS), n, m), ints(len(SIZES), n, m)
    cell = torch.rand(n, GRID * GRID, generator=generator, device=device).argsort(1)[:, :m]
    x = (cell % GRID - GRID // 2) * SPACING + floats(-JITTER, JITTER, n, m)
    z = (cell // GRID - GRID // 2) * SPACING + floats(-JITTER, JITTER, n, m)
    return SceneParams(count, shape, color, size, x, z, floats(*YAW, n, m), floats(-LIGHT_AZIMUTH, LIGHT_AZIMUTH, n))


def ray_origins(rows: Tensor, cols: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """World origin (x, y, z) of the ray through the centre of pixel (rows, cols) (float, broadcast) of a ``size`` x
    ``size`` frame; every ray runs along :data:`DIRECTION`."""
    right = ((cols + 0.5) / size * 2 - 1) * HALF_VIEW
    up = (1 - (rows + 0.5) / size * 2) * HALF_VIEW
    x, y, z = torch.broadcast_tensors(LOOK_AT[0] + right, LOOK_AT[1] + up * UP[1] - DISTANCE * DIRECTION[1],
                                      LOOK_AT[2] + up * UP[2] - DISTANCE * DIRECTION[2])
    return x, y, z


Hit = tuple[Tensor, Tensor]  # t (B, h, w), inf where the ray misses; world normal (B, h, w, 3)


def _sphere(ox: Tensor, oy: Tensor, oz: Tensor, x: Tensor, z: Tensor, s: float, yaw: Tensor) -> Hit:
    """Ray / sphere of radius s resting on the ground: the nearer root of |o + t d - c|^2 = s^2."""
    px, py, pz = ox - x, oy - s, oz - z
    dx, dy, dz = DIRECTION
    b = px * dx + py * dy + pz * dz
    disc = b * b - (px * px + py * py + pz * pz) + s * s
    t = torch.where(disc >= 0, -b - disc.clamp(min=0).sqrt(), math.inf)
    tc = t.clamp(max=FAR)
    return t, torch.stack([(px + tc * dx) / s, (py + tc * dy) / s, (pz + tc * dz) / s], -1)


def _cube(ox: Tensor, oy: Tensor, oz: Tensor, x: Tensor, z: Tensor, s: float, yaw: Tensor) -> Hit:
    """Ray / cube of half side CUBE * s on the ground, turned by yaw: the slab method (Kay and Kajiya, SIGGRAPH 1986)
    in the cube's frame; the face hit is the slab entered last."""
    h, c, sn = CUBE * s, yaw.cos(), yaw.sin()
    px, py, pz = ox - x, oy - h, oz - z
    dx, dy, dz = DIRECTION
    local = (c * px - sn * pz, py, sn * px + c * pz)
    dl = (c * dx - sn * dz, torch.full_like(c, dy), sn * dx + c * dz)
    ends = [((-h - lp) / d, (h - lp) / d) for lp, d in zip(local, dl)]
    near, axis = torch.stack([torch.minimum(a, b) for a, b in ends]).max(0)
    far = torch.stack([torch.maximum(a, b) for a, b in ends]).min(0).values
    t = torch.where(near <= far, near, math.inf)
    nl = [torch.where(axis == a, -torch.sign(dl[a]), 0.0) for a in range(3)]
    return t, torch.stack([c * nl[0] + sn * nl[2], nl[1], c * nl[2] - sn * nl[0]], -1)


def _cylinder(ox: Tensor, oy: Tensor, oz: Tensor, x: Tensor, z: Tensor, s: float, yaw: Tensor) -> Hit:
    """Ray / upright cylinder standing on the ground: its side (a quadratic in the ground plane) or its top disc."""
    r, height = CYLINDER[0] * s, CYLINDER[1] * s
    px, pz = ox - x, oz - z
    dx, dy, dz = DIRECTION
    a, b = dx * dx + dz * dz, px * dx + pz * dz
    disc = b * b - a * (px * px + pz * pz - r * r)
    side = (-b - disc.clamp(min=0).sqrt()) / a
    y = oy + side * dy
    side = torch.where((disc >= 0) & (y >= 0) & (y <= height), side, math.inf)
    top = (height - oy) / dy
    top = torch.where((px + top * dx) ** 2 + (pz + top * dz) ** 2 <= r * r, top, math.inf)
    ts = side.clamp(max=FAR)
    n = torch.stack([(px + ts * dx) / r, torch.zeros_like(ts), (pz + ts * dz) / r], -1)
    return torch.minimum(side, top), torch.where((side < top)[..., None], n, n.new_tensor((0.0, 1.0, 0.0)))


def _cone(ox: Tensor, oy: Tensor, oz: Tensor, x: Tensor, z: Tensor, s: float, yaw: Tensor) -> Hit:
    """Ray / upright cone standing on the ground: the nearer root of x^2 + z^2 = k^2 (apex - y)^2 between its base
    and apex (k = radius / height)."""
    r, height = CONE[0] * s, CONE[1] * s
    k2 = (r / height) ** 2
    px, pz, q = ox - x, oz - z, height - oy  # q: the apex's height above the ray's origin
    dx, dy, dz = DIRECTION
    a = dx * dx + dz * dz - k2 * dy * dy
    b = px * dx + pz * dz + k2 * q * dy
    disc = b * b - a * (px * px + pz * pz - k2 * q * q)
    root = disc.clamp(min=0).sqrt()
    t = torch.full_like(px, math.inf)
    for ti in ((-b - root) / a, (-b + root) / a):
        below_apex = q - ti * dy
        t = torch.where((disc >= 0) & (below_apex >= 0) & (below_apex <= height) & (ti < t), ti, t)
    tc = t.clamp(max=FAR)
    n = torch.stack([px + tc * dx, k2 * (q - tc * dy), pz + tc * dz], -1)
    return t, n / n.norm(dim=-1, keepdim=True).clamp(min=1e-12)


INTERSECT = (_sphere, _cube, _cylinder, _cone)  # aligned with SHAPES
#: each shape's bounding sphere (centre height, radius) in units of its scale: what the per-object window covers
BOUNDS = ((1.0, 1.0), (CUBE, CUBE * math.sqrt(3)), (CYLINDER[1] / 2, math.hypot(CYLINDER[0], CYLINDER[1] / 2)),
          (CONE[1] / 2, math.hypot(CONE[0], CONE[1] / 2)))


@dataclass
class Render:
    """A rendered batch: ``t`` (N, H, W) depth along the rays; ``normal`` (N, 3, H, W) world normals; ``slot``
    (N, H, W) int64 the object slot seen at each pixel (-1: the ground); ``rgb`` (N, 3, H, W) in [0, 1]."""

    t: Tensor
    normal: Tensor
    slot: Tensor
    rgb: Tensor


def _window(p: SceneParams, idx: Tensor, k: int, kind: int, size_class: int, size: int) -> tuple[Tensor, Tensor]:
    """Rows and columns ``(B, w)`` of a square window of the frame that holds every pixel the objects ``idx`` of
    slot ``k`` (all of one shape and size) can cover: around their bounding sphere's projection, moved inside the
    frame (which keeps every in-frame pixel of an object near an edge)."""
    height, radius = (b * SCALE[size_class] for b in BOUNDS[kind])
    half = math.ceil(radius / (2 * HALF_VIEW / size)) + 1
    w = min(2 * half + 1, size)
    x, z = p.x[idx, k], p.z[idx, k]
    col = ((x - LOOK_AT[0]) / HALF_VIEW + 1) / 2 * size - 0.5
    up = ((height - LOOK_AT[1]) * UP[1] + (z - LOOK_AT[2]) * UP[2]) / HALF_VIEW
    row = (1 - up) / 2 * size - 0.5
    offsets = torch.arange(w, device=x.device)
    start = [(c.floor().long() - half).clamp(0, size - w)[:, None] + offsets for c in (row, col)]
    return start[0], start[1]


def render(p: SceneParams, size: int, dtype: torch.dtype = torch.float32) -> Render:
    """Ray-cast every scene of ``p`` at ``size`` x ``size`` px on ``p``'s device: a z-buffer over the ground and
    the object slots (a nearer surface wins; ties keep the earlier slot), Lambertian shading of the winner. Each
    object is cast only over its window of the frame (:func:`_window`), one pass per slot, shape and size."""
    device = p.shape.device
    p = p.to(device, dtype)
    n, m = p.shape.shape
    grid = torch.arange(size, device=device, dtype=dtype)
    t = (ray_origins(grid[:, None], grid[None], size)[1] / -DIRECTION[1]).expand(n, size, size).clone()  # y = 0
    normal = torch.tensor((0.0, 1.0, 0.0), dtype=dtype, device=device).repeat(n, size, size, 1)
    slot = torch.full((n, size, size), -1, dtype=torch.long, device=device)
    for k, kind, size_class in ((k, a, b) for k in range(m) for a in range(len(SHAPES)) for b in range(len(SIZES))):
        idx = (p.active[:, k] & (p.shape[:, k] == kind) & (p.size[:, k] == size_class)).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        rows, cols = _window(p, idx, k, kind, size_class, size)
        origins = ray_origins(rows[:, :, None].to(dtype), cols[:, None, :].to(dtype), size)
        x, z, yaw = (v[idx, k, None, None] for v in (p.x, p.z, p.yaw))
        tk, nk = INTERSECT[kind](*origins, x, z, SCALE[size_class], yaw)
        at = (idx[:, None, None] * size + rows[:, :, None]) * size + cols[:, None, :]  # flat pixel indices
        nearer = tk < t.view(-1)[at]
        at = at[nearer]
        t.view(-1)[at] = tk[nearer]
        normal.view(-1, 3)[at] = nk[nearer]
        slot.view(-1)[at] = k
    albedo = torch.tensor((GROUND, *PALETTE.values()), dtype=dtype, device=device)  # the ground, then COLORS
    seen = torch.where(slot >= 0, p.color.gather(1, slot.clamp(min=0).flatten(1)).view_as(slot) + 1, 0)
    el, az = LIGHT_ELEVATION, p.light
    light = torch.stack([math.cos(el) * az.sin(), torch.full_like(az, math.sin(el)), math.cos(el) * az.cos()], 1)
    lambert = torch.bmm(normal.view(n, -1, 3), light[:, :, None]).view(n, size, size, 1).clamp_(min=0)
    rgb = albedo[seen] * (AMBIENT + (1 - AMBIENT) * lambert)
    return Render(t, normal.permute(0, 3, 1, 2), slot, rgb.permute(0, 3, 1, 2))


POSITIONS = (("at the top left", "at the top", "at the top right"), ("on the left", "in the middle", "on the right"),
             ("at the bottom left", "at the bottom", "at the bottom right"))  # by the thirds of the frame


def caption_length(max_objects: int) -> int:
    """Bytes of the ``text`` rows: :data:`TEXT_LENGTH`, or more (a multiple of 16) if the longest caption of
    ``max_objects`` objects needs it, so that no caption is ever cut."""
    words = (SIZES, COLORS, SHAPES, [p for row in POSITIONS for p in row])
    phrase = len("a") + sum(1 + max(len(w) for w in options) for options in words)
    longest = phrase * max_objects + len(", ") * max(max_objects - 2, 0) + len(" and ") * (max_objects > 1)
    return max(TEXT_LENGTH, -(-longest // 16) * 16)


def captions(p: SceneParams, boxes: Tensor, slots: Tensor, size: int) -> list[str]:
    """One caption per scene naming every visible object left to right (by its box's centre): "a large red sphere
    on the left and a small blue cube at the top right". ``boxes`` (N, M, 4) and ``slots`` (N, M) are the visible
    objects' boxes and slots, padded with -1."""
    centre = ((boxes[..., :2] + boxes[..., 2:]) / 2 / size * 3).clamp(max=2).long()  # (col, row) thirds
    order = torch.where(slots >= 0, boxes[..., 0] + boxes[..., 2], math.inf).argsort(dim=1, stable=True)
    rows = [t.gather(1, order).tolist() for t in (slots, centre[..., 0], centre[..., 1])]
    attrs = [t.tolist() for t in (p.size, p.color, p.shape)]
    texts = []
    for i, (sl, cols, rws) in enumerate(zip(*rows)):
        phrases = [f"a {SIZES[attrs[0][i][k]]} {COLORS[attrs[1][i][k]]} {SHAPES[attrs[2][i][k]]} {POSITIONS[r][c]}"
                   for k, c, r in zip(sl, cols, rws) if k >= 0]
        texts.append(" and ".join([", ".join(phrases[:-1]), phrases[-1]] if len(phrases) > 1 else phrases))
    return texts


def _u8(x: Tensor) -> Tensor:
    return x.clamp(0, 1).mul(255).round_().to(torch.uint8)


def annotate(p: SceneParams, r: Render) -> ImageSet:
    """The :class:`ImageSet` of a render: uint8 images; labels = the shape of the object covering the most pixels;
    fields ``depth`` (0 at :data:`NEAR` .. 255 at :data:`FAR`), camera-space ``normals``, ``contours`` (object
    pixels with a 4-neighbour showing something else), ``segmentation`` (0 ground, shape + 1), ``instances`` (0
    ground, j = the object of box row j - 1), ``boxes`` (xyxy pixel edges: a box spans columns x0 .. x1 - 1) and
    ``box_labels`` (shape + 1) of the visible objects in slot order, padded with -1, and ``text``."""
    n, m = p.shape.shape
    size, slot = r.slot.shape[-1], r.slot
    span = torch.arange(size, device=slot.device)
    area, edges = [], []  # per slot: visible pixels, and the first / last + 1 column and row they cover
    for k in range(m):
        mask = slot == k
        area.append(mask.sum((1, 2)))
        for hit in (mask.any(1), mask.any(2)):  # (N, W) columns, (N, H) rows
            edges.append(torch.stack([torch.where(hit, span, size).amin(-1), torch.where(hit, span + 1, 0).amax(-1)]))
    area = torch.stack(area, 1)
    visible = area > 0
    boxes = torch.stack(edges).view(m, 2, 2, n).permute(3, 0, 2, 1).flatten(2).float()  # xyxy
    order = (~visible).to(torch.uint8).argsort(dim=1, stable=True)  # visible slots first, in slot order
    slots = torch.where(visible, torch.arange(m, device=slot.device), -1).gather(1, order)
    boxes = torch.where(visible[..., None], boxes, -1.0).gather(1, order[..., None].expand(-1, -1, 4))
    row = visible.cumsum(1) - 1  # each visible slot's box row
    obj = slot.clamp(min=0).flatten(1)
    seg = torch.where(slot >= 0, p.shape.gather(1, obj).view_as(slot) + 1, 0)
    inst = torch.where(slot >= 0, row.gather(1, obj).view_as(slot) + 1, 0)
    edge = torch.zeros_like(slot, dtype=torch.bool)
    for dim in (1, 2):
        d = slot.diff(dim=dim) != 0
        edge.narrow(dim, 1, size - 1).logical_or_(d)
        edge.narrow(dim, 0, size - 1).logical_or_(d)
    nx, ny, nz = r.normal.unbind(1)
    camera = torch.stack([nx, ny * UP[1] + nz * UP[2], ny * TOWARD[1] + nz * TOWARD[2]], 1)  # UP[0] = TOWARD[0] = 0
    fields = {"depth": _u8((r.t[:, None] - NEAR) / (FAR - NEAR)), "normals": _u8((camera + 1) / 2),
              "contours": (edge & (slot >= 0)).to(torch.uint8)[:, None] * 255, "segmentation": seg.to(torch.uint8),
              "instances": inst.to(torch.uint8), "boxes": boxes,
              "box_labels": torch.where(slots >= 0, (p.shape + 1).gather(1, slots.clamp(min=0)), -1),
              "text": encode_texts(captions(p, boxes, slots, size), caption_length(m))}
    labels = p.shape.gather(1, area.argmax(1, keepdim=True)).squeeze(1)
    return ImageSet(_u8(r.rgb).cpu(), labels.cpu(), list(SHAPES), fields={k: v.cpu() for k, v in fields.items()})


def render_scenes(n: int, size: int = 64, seed: int = 0, max_objects: int = 3, chunk: int | None = None,
                  device: torch.device | str | None = None) -> ImageSet:
    """``n`` generated scenes at ``size`` x ``size`` px (:func:`sample_scenes` with a CPU generator seeded by
    ``seed``, :func:`render` on ``device``, :func:`annotate`), ``chunk`` scenes at a time (default: 4 M pixels); the
    same whatever ``chunk``."""
    if n < 1 or size < 4:
        raise UserError(f"scenes need n >= 1 and size >= 4 px, got n={n}, size={size}")
    p = sample_scenes(n, max_objects, torch.Generator().manual_seed(seed))
    chunk = chunk or max(1, 2**22 // (size * size))
    parts = [annotate(q, render(q, size)) for q in (p.slice(i, i + chunk).to(device) for i in range(0, n, chunk))]
    fields = {k: torch.cat([s.fields[k] for s in parts]) for k in parts[0].fields}
    return ImageSet(torch.cat([s.images for s in parts]), torch.cat([s.labels for s in parts]), list(SHAPES),
                    fields=fields)


def scenes(train: int = 2000, test: int = 500, size: int = 64, seed: int = 0, max_objects: int = 3) -> Dataset:
    """The generated scene set: ``train`` scenes to pretrain on and probe with, ``test`` more to evaluate; labels are
    the shape (:data:`SHAPES`) of each scene's largest visible object; ``segmentation`` ids name :data:`SEG_CLASSES`."""
    full = render_scenes(train + test, size, seed, max_objects)
    train_set = full.subset(torch.arange(train))
    return Dataset("scenes", pretrain=train_set, train=train_set, test=full.subset(torch.arange(train, train + test)))
