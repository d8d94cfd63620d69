"""Colourisation as tracking (Vondrick et al., ECCV 2018): the pointer's copy and its colour loss against float64
loops, the colour clusters fitted once before the first step, the step's frame pairs and quantised targets against a
per-clip reference (and the pairs' distribution), propagate() keeping a mask on a moving square, views and outputs,
bad inputs, 2 processes like 1, and a short run on moving objects."""

import csv
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import selfsup
from selfsup.backbones import build_backbone
from selfsup.data.ops.base import resize
from selfsup.data.ops.lab import lab_to_rgb, rgb_to_lab
from selfsup.data.sources import Dataset, ImageSet
from selfsup.engine.build import build_method, resolve_config
from selfsup.engine.epoch import Epoch
from selfsup.errors import UserError
from selfsup.losses.pointer import pointer_colour_loss, pointer_copy
from selfsup.methods import Batch
from selfsup.methods.color_tracking import ColorTracking
from selfsup.methods.video import part_labels
from tests.helpers import assert_two_ranks_train_like_one

SHAPES = ("disk", "square", "cross", "ring")


def pointer_weights(ref: torch.Tensor, tgt: torch.Tensor, b: int, j: int, temperature: float) -> list[float]:
    """Vondrick et al.'s eq. 1 for target position j of sample b, in float64: the softmax over the reference
    positions i of f_i . f_j / T (positions in row-major order)."""
    r, t = ref[b].detach().double().flatten(1), tgt[b].detach().double().flatten(1)
    scores = [float(r[:, i] @ t[:, j]) / temperature for i in range(r.shape[1])]
    top = max(scores)
    e = [math.exp(s - top) for s in scores]
    return [v / sum(e) for v in e]


def test_pointer_copy_matches_a_float64_loop():
    g = torch.Generator().manual_seed(0)
    ref, tgt = torch.randn(2, 3, 3, 4, generator=g), torch.randn(2, 3, 2, 3, generator=g)
    values = torch.rand(2, 2, 3, 4, generator=g)
    for temperature in (1.0, 0.3):
        out = pointer_copy(ref, tgt, values, temperature)
        assert out.shape == (2, 2, 2, 3)
        for b in range(2):
            for j in range(6):
                w = pointer_weights(ref, tgt, b, j, temperature)
                for k in range(2):
                    expected = sum(wi * float(v) for wi, v in zip(w, values[b, k].flatten(), strict=True))
                    assert float(out[b, k].flatten()[j]) == pytest.approx(expected, abs=1e-6)


def reference_colour_loss(ref: torch.Tensor, tgt: torch.Tensor, ref_c: torch.Tensor, tgt_c: torch.Tensor,
                          temperature: float = 1.0) -> float:
    """The cross-entropy of the copied colour distribution, loop by loop in float64: -log of the pointer weight on the
    reference positions of the target position's colour; 0 where no reference position has it; mean over all."""
    total, count = 0.0, 0
    for b in range(len(ref)):
        for j, c in enumerate(tgt_c[b].flatten().tolist()):
            w = pointer_weights(ref, tgt, b, j, temperature)
            mass = sum(wi for wi, ci in zip(w, ref_c[b].flatten().tolist(), strict=True) if ci == c)
            total += -math.log(mass) if mass > 0 else 0.0
            count += 1
    return total / count


def test_the_colour_loss_matches_a_float64_loop_and_skips_colours_the_reference_lacks():
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(2, 4, 3, 3, generator=g, requires_grad=True)
    tgt = torch.randn(2, 4, 3, 3, generator=g, requires_grad=True)
    ref_c, tgt_c = torch.randint(0, 3, (2, 3, 3), generator=g), torch.randint(0, 4, (2, 3, 3), generator=g)
    assert not (ref_c == 3).any() and (tgt_c == 3).any()  # colour 3: in no reference
    for temperature in (1.0, 0.5):
        loss = pointer_colour_loss(ref, tgt, ref_c, tgt_c, temperature)
        assert loss.item() == pytest.approx(reference_colour_loss(ref, tgt, ref_c, tgt_c, temperature), abs=1e-5)
    loss.backward()
    assert torch.isfinite(ref.grad).all() and torch.isfinite(tgt.grad).all()
    # the same number as the cross-entropy of pointer_copy's distribution over one-hot colours
    copied = pointer_copy(ref, tgt, F.one_hot(ref_c, 4).permute(0, 3, 1, 2), 0.5).detach()
    picked = copied.gather(1, tgt_c[:, None]).squeeze(1)
    assert loss.item() == pytest.approx(-(picked.log() * (picked > 0)).nan_to_num().mean().item(), abs=1e-5)


class Brightness(nn.Module):
    """A hand-set trunk on L in [-1, 1]: per 2 x 2 cell, ``scale`` times how bright (L > 0) and how dark it is, so that
    bright cells point at bright ones and dark at dark. Records its input."""

    def __init__(self, scale: float = 8.0) -> None:
        super().__init__()
        self.scale = scale
        self.out_dim = 2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        v = F.avg_pool2d(x, 2)
        return torch.cat([F.relu(v), F.relu(-v)], 1) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean((2, 3))


def tracker(size: int = 16, backbone: nn.Module | None = None, identity: bool = False, **kw) -> ColorTracking:
    torch.manual_seed(0)
    backbone = backbone or build_backbone("small", in_channels=1, width=0.25)
    method = ColorTracking(backbone, getattr(backbone, "out_dim", 8), size, **kw)
    if identity:  # the embedding passes the hand-set features through
        with torch.no_grad():
            method.embed.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            method.embed.bias.zero_()
    return method


def clip_batch(frames: torch.Tensor, seed: int = 0) -> Batch:
    return Batch(frames[:, frames.shape[1] // 2].contiguous(), None, torch.arange(len(frames)),
                 torch.Generator().manual_seed(seed), 0.0, fields={"frames": frames})


def flat_clips(colours: list[tuple[int, int, int]], t: int = 3, size: int = 8) -> torch.Tensor:
    """One clip per colour, every frame that flat colour."""
    return torch.tensor(colours, dtype=torch.uint8).view(-1, 1, 3, 1, 1).expand(-1, t, -1, size, size).contiguous()


def test_the_colours_are_k_means_of_the_training_sets_ab_fitted_once(monkeypatch):
    palette = [(200, 30, 30), (30, 180, 60), (40, 60, 220)]
    frames = flat_clips(palette * 4)
    method = tracker(8, num_colours=3)
    method.on_epoch_start(Epoch(0, frames[:, 1].contiguous(), method, {}, torch.device("cpu"), 0, {"frames": frames}))
    expected = rgb_to_lab(torch.tensor(palette).float().view(3, 3, 1, 1) / 255)[:, 1:, 0, 0]
    order = lambda c: c[c[:, 0].argsort()]  # noqa: E731
    torch.testing.assert_close(order(method.colours), order(expected), atol=1e-3, rtol=0)
    monkeypatch.setattr("selfsup.methods.color_tracking.subset_kmeans", lambda *a, **k: pytest.fail("clustered again"))
    method.on_epoch_start(Epoch(1, frames[:, 1].contiguous(), method, {}, torch.device("cpu"), 0, {"frames": frames}))
    assert "colours" in method.state_dict()


def test_the_step_pairs_frames_gap_apart_and_targets_their_quantised_colours():
    g = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (5, 6, 3, 12, 12), generator=g, dtype=torch.uint8)
    method = tracker(8, backbone=Brightness(), gap=2, num_colours=4, embed_dim=3)
    method.colours.copy_(torch.tensor([[0.0, 0.0], [40.0, 20.0], [-30.0, 30.0], [10.0, -50.0]]))
    loss = method.training_step(clip_batch(frames))
    first = method._inputs(clip_batch(frames))[2]  # the same seed: the same pairs
    assert ((first >= 0) & (first <= 3)).all()
    lightness, colours = [], []
    for k in range(2):  # references, then targets
        for i in range(5):
            lab = rgb_to_lab(resize(frames[i, int(first[i]) + 2 * k][None], 8))[0]
            lightness.append((lab[:1] - 50) / 50)
            ab = F.interpolate(lab[None, 1:], size=4, mode="area")[0].double()  # the 4 x 4 map of the trunk
            dist = ((ab[None] - method.colours.double()[:, :, None, None]) ** 2).sum(1)  # (Q, 4, 4)
            colours.append(dist.argmin(0))
    torch.testing.assert_close(method.backbone.seen, torch.stack(lightness), atol=1e-5, rtol=0)
    feats = method.embed(method.backbone.forward_features(torch.stack(lightness))).detach()
    colours = torch.stack(colours)
    expected = reference_colour_loss(feats[:5], feats[5:], colours[:5], colours[5:])
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_reference_frames_are_drawn_uniformly_from_those_with_a_target_gap_frames_later():
    frames = torch.zeros(3000, 5, 3, 2, 2, dtype=torch.uint8)
    first = tracker(2, backbone=Brightness(), gap=2)._inputs(clip_batch(frames))[2]
    share = torch.bincount(first, minlength=5).float() / 3000
    assert (share[3:] == 0).all() and (share[:3] - 1 / 3).abs().max() < 0.035, share  # 4 sigma


def square_clip(t: int = 6, size: int = 32, side: int = 10, step: tuple[int, int] = (2, 1)) -> tuple[torch.Tensor,
                                                                                                       torch.Tensor]:
    """A bright square moving by ``step`` (dx, dy) per frame over a dark ground: the clip (1, t, 3, size, size) uint8
    and the square's masks (t, size, size) bool."""
    frames = torch.full((1, t, 3, size, size), 50, dtype=torch.uint8)
    masks = torch.zeros(t, size, size, dtype=torch.bool)
    for f in range(t):
        x, y = 4 + f * step[0], 6 + f * step[1]
        frames[0, f, :, y : y + side, x : x + side] = 220
        masks[f, y : y + side, x : x + side] = True
    return frames, masks


def test_propagate_keeps_a_mask_on_a_moving_square():
    frames, masks = square_clip()
    method = tracker(32, backbone=Brightness(), identity=True, embed_dim=2)
    out = method.propagate(frames, masks[None, :1].float())
    assert out.shape == (1, 6, 1, 32, 32)
    assert torch.equal(out[0, 0, 0], masks[0].float())
    predicted = out[0, -1, 0] > 0.5
    iou = (predicted & masks[-1]).sum() / (predicted | masks[-1]).sum()
    assert iou > 0.5, iou
    assert not (predicted & masks[0]).any()  # it left the square's first place
    # a part grid propagates as distributions: every pixel's labels still sum to 1
    parts = method.propagate(frames, part_labels(1, 2, 32, 32))
    torch.testing.assert_close(parts.sum(2), torch.ones(1, 6, 32, 32), atol=1e-5, rtol=0)


def test_views_and_outputs_draw_the_pairs_the_copy_and_the_propagated_parts():
    g = torch.Generator().manual_seed(4)
    frames = torch.randint(0, 256, (3, 4, 3, 16, 16), generator=g, dtype=torch.uint8)
    method = tracker(16, num_colours=5).eval()
    method.on_epoch_start(Epoch(0, frames[:, 2].contiguous(), method, {}, torch.device("cpu"), 0, {"frames": frames}))
    panels = method.views(clip_batch(frames))
    first = method._inputs(clip_batch(frames))[2].tolist()
    assert [len(p.images) for p in panels] == [3] * 6
    assert all(0 <= float(p.images.min()) and float(p.images.max()) <= 1 for p in panels)
    assert panels[0].captions == [f"frame {f}" for f in first]
    assert panels[1].captions == [f"frame {f + 1}" for f in first]
    assert all(c.endswith("% right") for c in panels[4].captions)
    assert panels[5].images.shape[-1] == 4 * 16 + 3  # the 4 frames side by side, 1 px apart
    rows = method.outputs(frames[:, 0], torch.Generator().manual_seed(0))
    assert [len(p.images) for p in rows] == [3, 3]
    assert all(0 <= float(p.images.min()) and float(p.images.max()) <= 1 for p in rows)


def test_bad_inputs_are_user_errors():
    with pytest.raises(UserError, match="num_colours"):
        tracker(num_colours=1)
    method = tracker(8, gap=3)
    with pytest.raises(UserError, match="frame pair 3 apart"):
        method.training_step(clip_batch(torch.zeros(2, 3, 3, 8, 8, dtype=torch.uint8)))
    with pytest.raises(UserError, match="frames"):
        method.training_step(Batch(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), None, torch.arange(2),
                                   torch.Generator(), 0.0))


def test_two_processes_train_color_tracking_like_one(tmp_path):
    cfg = selfsup.TrainConfig(method="color-tracking", data="moving-objects", steps=3, batch_size=16, image_size=16,
                              device="cpu", method_args=dict(num_colours=8, embed_dim=8, gap=2))
    assert_two_ranks_train_like_one(tmp_path, cfg, data="moving-objects")


SHAPE_PAIRS = list(itertools.combinations(range(4), 2))


def crossing_pairs(n: int = 900, t: int = 4, size: int = 32, seed: int = 0) -> tuple[Dataset, torch.Tensor]:
    """Clips where colour can only be copied by appearance: two shapes (disk, square, cross, ring) per clip, each
    shape in its own colour, all four colours of the same lightness (L 65) on a darker noisy ground (L 35), so that
    in L they differ only by their form; one in the top half and one in the bottom half, each crossing the frame left
    or right at random at 3.2-4.5 px per frame (no place tells where a colour went). Labels: the unordered shape pair
    (6 classes); split 2:1. Also the test clips' masks of their first object (N_test, t, size, size)."""
    g = torch.Generator().manual_seed(seed)
    angles = torch.arange(4) * math.pi / 2 + 0.3
    hues = lab_to_rgb(torch.stack([torch.full((4,), 65.0), 35 * angles.cos(), 35 * angles.sin()], 1)[..., None, None])
    labels = torch.randint(0, len(SHAPE_PAIRS), (n,), generator=g)
    pair = torch.tensor(SHAPE_PAIRS)[labels]
    pair = torch.where(torch.rand(n, 1, generator=g) < 0.5, pair.flip(1), pair)
    radius = (torch.rand(n, 2, 1, 1, generator=g) * 0.05 + 0.14) * size
    right = torch.rand(n, 2, generator=g) < 0.5
    speed = (torch.rand(n, 2, generator=g) * 0.04 + 0.1) * size
    x0, step = torch.where(right, 0.22 * size, 0.78 * size), torch.where(right, speed, -speed)
    y = torch.tensor([0.27, 0.73]) * size + torch.randn(n, 2, generator=g)
    ground = lab_to_rgb(torch.tensor([35.0, 0.0, 0.0]).view(3, 1, 1))
    frames = (ground + 0.03 * torch.randn(n, 1, 3, size, size, generator=g)).clamp(0, 1).expand(-1, t, -1, -1, -1)
    frames, masks = frames.clone(), torch.zeros(n, t, size, size)
    axis = torch.arange(size).float()
    for f in range(t):
        dx = (axis.view(1, 1, 1, -1) - (x0 + f * step)[..., None, None]).abs()  # (n, 2, 1, size)
        dy = (axis.view(1, 1, -1, 1) - y[..., None, None]).abs()
        dist = (dx**2 + dy**2).sqrt()
        r = radius
        shapes = torch.stack([dist < r, (dx < r) & (dy < r), ((dy < r / 3) & (dx < r)) | ((dx < r / 3) & (dy < r)),
                              (dist < r) & (dist > r / 2)], 2)  # (n, 2 objects, 4 shapes, size, size)
        cover = shapes.gather(2, pair[:, :, None, None, None].expand(-1, -1, 1, size, size)).squeeze(2).float()
        for o in range(2):
            m = cover[:, o, None]
            frames[:, f] = frames[:, f] * (1 - m) + hues[pair[:, o]] * m
        masks[:, f] = cover[:, 0]
    clips = frames.mul(255).round().to(torch.uint8)
    cut, names = 2 * n // 3, [f"{SHAPES[a]}+{SHAPES[b]}" for a, b in SHAPE_PAIRS]
    sets = [ImageSet(clips[part, t // 2].contiguous(), labels[part], names, fields={"frames": clips[part]})
            for part in (slice(0, cut), slice(cut, n))]
    return Dataset("crossing-pairs", pretrain=sets[0], train=sets[0], test=sets[1]), masks[cut:]


def test_loss_falls_and_tracking_emerges(tmp_path):
    """On crossing pairs (32 px, 4 x 4 feature maps, frames 2 apart), 60 steps (measured): the loss falls from 1.08 to
    0.58; the first object's mask of frame 0, propagated to frame 3 of the test clips, puts 35% of its mass on the
    object (random init: 8%; soft IoU 0.19 vs 0.04). KNOWN GAP: kNN on the shape pair is not above random init yet
    (k = 200: 56.0% vs 57.7%; on 480 clips 150 steps reach 44.4% vs 40.6%, 81.9% vs 73.8% at k = 5)."""
    data, masks = crossing_pairs()
    cfg = selfsup.TrainConfig(method="color-tracking", data="crossing-pairs", steps=60, batch_size=32, image_size=32,
                              log_every=10, device="cpu", method_args=dict(gap=2))
    run = selfsup.train(cfg, tmp_path / "run", evaluate=False, show_progress=False, data=data)
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "run" / "metrics.csv"))]
    assert losses[-1] < 0.7 * losses[0], losses
    init = build_method(resolve_config(cfg, data), 32, data.num_classes, num_samples=len(data.pretrain))

    def on_object(method: ColorTracking) -> float:
        out = method.propagate(data.test.fields["frames"], masks[:, :1])[:, -1, 0]
        return float(((out * masks[:, -1]).sum((1, 2)) / out.sum((1, 2))).mean())

    assert on_object(run.method) > on_object(init) + 0.1
    trained, random_init = (selfsup.evaluate.knn(m.encoder(), data.train, data.test, image_size=32)
                            for m in (run.method, init))
    assert trained > random_init - 0.15, (trained, random_init)
