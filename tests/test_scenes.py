"""The generated scene set: its parameter draws, the batched ray caster against a per-pixel reference, the dense
fields' geometry (z-buffer, normals, boxes, contours), captions, the training smoke run and the VOC / COCO files."""

import csv
import json
import math
import xml.etree.ElementTree as ET
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup
from selfsup.data import scenes as sc
from selfsup.data.annotations import write_coco, write_voc
from selfsup.data.text import decode_texts

FIELDS = {"depth": (torch.uint8, (1, "S", "S")), "normals": (torch.uint8, (3, "S", "S")),
          "contours": (torch.uint8, (1, "S", "S")), "segmentation": (torch.uint8, ("S", "S")),
          "instances": (torch.uint8, ("S", "S")), "boxes": (torch.float32, ("M", 4)),
          "box_labels": (torch.int64, ("M",)), "text": (torch.uint8, (sc.caption_length(3),))}


def params(n: int, seed: int = 0, max_objects: int = 3) -> sc.SceneParams:
    return sc.sample_scenes(n, max_objects, torch.Generator().manual_seed(seed))


def single(p: sc.SceneParams, k: int) -> sc.SceneParams:
    """Slot ``k`` of every scene alone (no object where the scene has none in that slot)."""
    cols = {f: getattr(p, f)[:, k:k + 1] for f in ("shape", "color", "size", "x", "z", "yaw")}
    return sc.SceneParams(count=(p.count > k).long(), light=p.light, **cols)


# ---- a per-pixel reference: plain Python floats, one ray at a time --------------------------------------------


def _quadric_hit(f, o, d, lo: float, hi: float):
    """Nearest t where the quadric f(o + t d) = 0 (its coefficients read off f at t = -1, 0, 1) with lo <= y <= hi."""
    at = [f(tuple(o[a] + t * d[a] for a in range(3))) for t in (-1.0, 0.0, 1.0)]
    a, b, c = (at[0] + at[2]) / 2 - at[1], (at[2] - at[0]) / 2, at[1]
    disc = b * b - 4 * a * c
    if disc < 0:
        return None
    for t in sorted(((-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a))):
        if lo <= o[1] + t * d[1] <= hi:
            return t
    return None


def _gradient(f, q):
    eps = 1e-6
    g = [(f(tuple(q[b] + (eps if b == a else 0) for b in range(3))) -
          f(tuple(q[b] - (eps if b == a else 0) for b in range(3)))) for a in range(3)]
    norm = math.sqrt(sum(v * v for v in g))
    return tuple(v / norm for v in g)


def _ref_hit(shape: int, o, d, x: float, z: float, s: float, yaw: float):
    """(t, world normal) of the first surface of one object along the ray, or None."""
    if shape == 1:  # cube: each of the 6 face planes, hit inside the face
        h, c, sn = sc.CUBE * s, math.cos(yaw), math.sin(yaw)
        p = (o[0] - x, o[1] - h, o[2] - z)
        to_local = lambda v: (c * v[0] - sn * v[2], v[1], sn * v[0] + c * v[2])  # noqa: E731
        ol, dl = to_local(p), to_local(d)
        faces = []
        for a in range(3):
            for sign in (-1.0, 1.0):
                t = (sign * h - ol[a]) / dl[a]
                if all(abs(ol[b] + t * dl[b]) <= h for b in range(3) if b != a):
                    faces.append((t, tuple(sign if b == a else 0.0 for b in range(3))))
        if not faces:
            return None
        t, n = min(faces)
        return t, (c * n[0] + sn * n[2], n[1], -sn * n[0] + c * n[2])
    if shape == 0:
        f = lambda q: (q[0] - x) ** 2 + (q[1] - s) ** 2 + (q[2] - z) ** 2 - s * s  # noqa: E731
        t = _quadric_hit(f, o, d, -math.inf, math.inf)
        return None if t is None else (t, _gradient(f, tuple(o[a] + t * d[a] for a in range(3))))
    if shape == 2:
        r, height = sc.CYLINDER[0] * s, sc.CYLINDER[1] * s
        f = lambda q: (q[0] - x) ** 2 + (q[2] - z) ** 2 - r * r  # noqa: E731
        hits = []
        t = _quadric_hit(f, o, d, 0.0, height)
        if t is not None:
            hits.append((t, _gradient(f, tuple(o[a] + t * d[a] for a in range(3)))))
        t = (height - o[1]) / d[1]
        if (o[0] + t * d[0] - x) ** 2 + (o[2] + t * d[2] - z) ** 2 <= r * r:
            hits.append((t, (0.0, 1.0, 0.0)))
        return min(hits) if hits else None
    r, height = sc.CONE[0] * s, sc.CONE[1] * s
    f = lambda q: (q[0] - x) ** 2 + (q[2] - z) ** 2 - (r / height) ** 2 * (height - q[1]) ** 2  # noqa: E731
    t = _quadric_hit(f, o, d, 0.0, height)
    return None if t is None else (t, _gradient(f, tuple(o[a] + t * d[a] for a in range(3))))


def reference(p: sc.SceneParams, i: int, size: int) -> dict[str, np.ndarray]:
    """Scene ``i`` ray by ray: nearest surface over the ground and the objects in slot order, Lambertian shading."""
    d = sc.DIRECTION
    light = (math.cos(sc.LIGHT_ELEVATION) * math.sin(p.light[i]), math.sin(sc.LIGHT_ELEVATION),
             math.cos(sc.LIGHT_ELEVATION) * math.cos(p.light[i]))
    out = {k: np.zeros(shape) for k, shape in (("rgb", (3, size, size)), ("t", (size, size)),
                                               ("normal", (3, size, size)), ("seg", (size, size)))}
    for row in range(size):
        for col in range(size):
            right, up = ((col + 0.5) / size * 2 - 1) * sc.HALF_VIEW, (1 - (row + 0.5) / size * 2) * sc.HALF_VIEW
            o = tuple(sc.LOOK_AT[a] + right * (a == 0) + up * sc.UP[a] - sc.DISTANCE * d[a] for a in range(3))
            t, n, colour, seg = -o[1] / d[1], (0.0, 1.0, 0.0), sc.GROUND, 0
            for k in range(int(p.count[i])):
                shape = int(p.shape[i, k])
                hit = _ref_hit(shape, o, d, float(p.x[i, k]), float(p.z[i, k]), sc.SCALE[int(p.size[i, k])],
                               float(p.yaw[i, k]))
                if hit is not None and hit[0] < t:
                    (t, n), colour, seg = hit, sc.PALETTE[sc.COLORS[int(p.color[i, k])]], shape + 1
            shade = sc.AMBIENT + (1 - sc.AMBIENT) * max(0.0, sum(a * b for a, b in zip(n, light)))
            out["rgb"][:, row, col] = [c * shade for c in colour]
            out["t"][row, col], out["seg"][row, col] = t, seg
            out["normal"][:, row, col] = [n[0], sum(a * b for a, b in zip(n, sc.UP)),
                                          sum(a * b for a, b in zip(n, sc.TOWARD))]
    u8 = lambda v: np.round(np.clip(v, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    return {"images": u8(out["rgb"]), "depth": u8((out["t"] - sc.NEAR) / (sc.FAR - sc.NEAR))[None],
            "normals": u8((out["normal"] + 1) / 2), "segmentation": out["seg"].astype(np.uint8)}


def test_the_batched_renderer_matches_a_per_pixel_reference():
    p = params(64, seed=3, max_objects=4)
    picked, seen = [], set()
    for i in range(64):  # a few scenes that together hold every shape, with several objects each
        if int(p.count[i]) >= 3 and not set(p.shape[i, : p.count[i]].tolist()) <= seen:
            picked.append(i)
            seen |= set(p.shape[i, : p.count[i]].tolist())
    assert seen == set(range(len(sc.SHAPES)))
    size = 24
    exact = sc.annotate(p, sc.render(p, size, torch.float64))  # float64: the same rounding as the reference
    fast = sc.annotate(p, sc.render(p, size))  # float32, the default
    for i in picked:
        ref = reference(p, i, size)
        for key in ("images", "depth", "normals", "segmentation"):
            got = exact.images[i] if key == "images" else exact.fields[key][i]
            np.testing.assert_array_equal(got.numpy(), ref[key], err_msg=f"{key} of scene {i}")
        agree = (fast.fields["segmentation"][i].numpy() == ref["segmentation"]).mean()
        close = (np.abs(fast.images[i].numpy().astype(int) - ref["images"]) <= 1).mean()
        assert agree > 0.99 and close > 0.99, (agree, close)


# ---- parameters, determinism, the contract -----------------------------------------------------------------------


def test_parameter_distributions():
    n, m = 40000, 3
    p = params(n, seed=1, max_objects=m)
    count = torch.bincount(p.count, minlength=m + 1).float() / n
    assert count[0] == 0 and torch.allclose(count[1:], torch.full((m,), 1 / m), atol=0.01)
    active = p.active
    for values, k in ((p.shape, len(sc.SHAPES)), (p.color, len(sc.COLORS)), (p.size, len(sc.SIZES))):
        freq = torch.bincount(values[active], minlength=k).float() / active.sum()
        assert torch.allclose(freq, torch.full((k,), 1 / k), atol=0.01), freq
    cell_x, cell_z = (p.x / sc.SPACING).round(), (p.z / sc.SPACING).round()
    assert cell_x.abs().max() <= sc.GRID // 2 and cell_z.abs().max() <= sc.GRID // 2
    cell = (cell_z + 1) * sc.GRID + cell_x + 1
    assert all(len(set(c[:k].tolist())) == k for c, k in zip(cell[:2000], p.count[:2000].tolist()))  # distinct cells
    freq = torch.bincount(cell.flatten().long(), minlength=9).float() / cell.numel()
    assert torch.allclose(freq, torch.full((9,), 1 / 9), atol=0.01)
    for jitter in (p.x - cell_x * sc.SPACING, p.z - cell_z * sc.SPACING):
        assert jitter.abs().max() <= sc.JITTER + 1e-12 and abs(jitter.mean()) < 0.002
        assert jitter.std() == pytest.approx(2 * sc.JITTER / math.sqrt(12), rel=0.02)
    assert sc.YAW[0] <= p.yaw.min() and p.yaw.max() < sc.YAW[1]
    assert p.yaw.mean() == pytest.approx(sum(sc.YAW) / 2, abs=0.01)
    assert p.light.abs().max() <= sc.LIGHT_AZIMUTH and abs(p.light.mean()) < 0.01


def test_rendered_objects_counts_and_sizes_are_in_range():
    s = sc.render_scenes(600, 32, seed=2)
    p = params(600, seed=2)
    boxes, labels = s.fields["boxes"], s.fields["box_labels"]
    visible = labels > 0
    assert visible.any(1).all() and (visible.sum(1) <= p.count).all()
    assert visible.sum() > 0.9 * p.count.sum()  # few objects hidden entirely
    assert labels[visible].min() >= 1 and labels[visible].max() <= len(sc.SHAPES)
    assert (torch.bincount(s.labels, minlength=len(sc.SHAPES)) > 60).all()  # every shape is some scene's largest
    side = (boxes[..., 2:] - boxes[..., :2])[visible]
    most = 2 * math.ceil(max(r for _, r in sc.BOUNDS) * sc.SCALE[1] / (2 * sc.HALF_VIEW / 32)) + 1
    assert side.min() >= 1 and side.max() <= most
    # sizes: a large object's box is larger than a small one's of the same shape (scenes of one object: unoccluded)
    one = p.count == 1
    box_area = (boxes[one, 0, 2:] - boxes[one, 0, :2]).prod(1)
    for shape in range(len(sc.SHAPES)):
        small = box_area[(p.shape[one, 0] == shape) & (p.size[one, 0] == 0)]
        large = box_area[(p.shape[one, 0] == shape) & (p.size[one, 0] == 1)]
        assert small.max() < large.min(), (sc.SHAPES[shape], small.max(), large.min())


def test_the_same_seed_gives_the_same_scenes_whatever_the_chunks():
    a, b = sc.render_scenes(10, 24, seed=5), sc.render_scenes(10, 24, seed=5, chunk=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert all(torch.equal(a.fields[k], b.fields[k]) for k in a.fields)
    assert not torch.equal(a.images, sc.render_scenes(10, 24, seed=6).images)


def test_fields_follow_the_contract():
    ds = sc.scenes(train=20, test=10, size=24)
    assert ds.name == "scenes" and ds.evaluable and ds.pretrain is ds.train and ds.num_classes == len(sc.SHAPES)
    for part, n in ((ds.train, 20), (ds.test, 10)):
        assert part.images.shape == (n, 3, 24, 24) and part.images.dtype == torch.uint8
        assert part.labels.dtype == torch.int64 and part.classes == list(sc.SHAPES)
        assert set(part.fields) == set(FIELDS)
        for key, (dtype, shape) in FIELDS.items():
            want = (n, *(24 if v == "S" else 3 if v == "M" else v for v in shape))
            assert part.fields[key].dtype == dtype and part.fields[key].shape == want, key
        assert set(part.fields["contours"].unique().tolist()) <= {0, 255}
        assert part.fields["segmentation"].max() <= len(sc.SHAPES)
    assert not torch.equal(ds.train.images[:10], ds.test.images)


def test_load_data_names_the_scenes():
    from selfsup.data.sources import DATASETS, load_data

    ds = load_data("scenes", image_size=16)
    assert "scenes" in DATASETS and ds.name == "scenes" and ds.native_size == 16
    assert (len(ds.train), len(ds.test)) == (2000, 500)


# ---- geometry of the fields --------------------------------------------------------------------------------------


def test_the_visible_surface_is_the_nearest_one():
    p = params(64, seed=4)
    full = sc.render(p, 32)
    grid = torch.arange(32.0)
    ground = sc.ray_origins(grid[:, None], grid[None], 32)[1] / -sc.DIRECTION[1]
    alone = [sc.render(single(p, k), 32) for k in range(3)]  # each object on its own
    ts = torch.stack([ground.expand(64, 32, 32)] + [a.t.where(a.slot == 0, math.inf) for a in alone])
    nearest = ts.min(0)
    assert torch.equal(full.t, nearest.values) and torch.equal(full.slot, nearest.indices - 1)
    assert sc.NEAR <= full.t.min() and full.t.max() <= sc.FAR  # depth is never clipped
    depth = sc.annotate(p, full).fields["depth"][:, 0]
    ground_depth = ((ground - sc.NEAR) / (sc.FAR - sc.NEAR) * 255).round()
    assert (depth.float() <= ground_depth)[full.slot >= 0].all()  # objects stand in front of the ground behind


def test_a_fully_hidden_object_is_dropped():
    p = params(1, seed=0)
    # slot 0: a large cube at the centre; slot 1: a small sphere inside it; slot 2: a small cone to the right
    p = sc.SceneParams(count=torch.tensor([3]), shape=torch.tensor([[1, 0, 3]]), color=torch.tensor([[0, 2, 3]]),
                       size=torch.tensor([[1, 0, 0]]), x=torch.tensor([[0.0, 0.0, sc.SPACING]], dtype=torch.float64),
                       z=torch.zeros(1, 3, dtype=torch.float64), yaw=torch.full((1, 3), 0.3, dtype=torch.float64),
                       light=p.light)
    s = sc.annotate(p, sc.render(p, 32))
    assert s.fields["box_labels"].tolist() == [[2, 4, -1]] and (s.fields["boxes"][0, 2] == -1).all()
    assert set(s.fields["instances"].unique().tolist()) == {0, 1, 2}
    assert decode_texts(s.fields["text"]) == ["a large red cube in the middle and a small yellow cone on the right"]


def test_normals_are_unit_and_face_the_camera():
    r = sc.render(params(200, seed=5), 32)
    assert torch.allclose(r.normal.norm(dim=1), torch.ones(()), atol=1e-4)
    toward = (r.normal * torch.tensor(sc.TOWARD).view(3, 1, 1)).sum(1)
    assert toward.min() > -1e-5 and (toward[r.slot >= 0] > 0.05).float().mean() > 0.95
    s = sc.annotate(params(200, seed=5), r)
    assert s.fields["normals"][:, 2].min() >= 127
    ground = s.fields["normals"].permute(0, 2, 3, 1)[r.slot < 0].unique(dim=0)
    expect = [round((v + 1) / 2 * 255) for v in (0.0, math.cos(sc.ELEVATION), math.sin(sc.ELEVATION))]
    assert ground.tolist() == [expect]


def test_boxes_tightly_enclose_each_visible_object_and_contours_lie_on_its_edges():
    p = params(40, seed=6)
    r = sc.render(p, 32)
    s = sc.annotate(p, r)
    for i in range(40):
        inst, seg = s.fields["instances"][i].numpy(), s.fields["segmentation"][i].numpy()
        slots = sorted(set(r.slot[i].unique().tolist()) - {-1})  # box rows: the visible slots in order
        for j, (box, label) in enumerate(zip(s.fields["boxes"][i].tolist(), s.fields["box_labels"][i].tolist())):
            if j >= len(slots):
                assert box == [-1] * 4 and label == -1
                continue
            mask = r.slot[i].numpy() == slots[j]
            assert ((inst == j + 1) == mask).all() and (seg[mask] == label).all() and label == p.shape[i, slots[j]] + 1
            rows, cols = np.nonzero(mask)
            assert box == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        edge = np.zeros_like(inst, dtype=bool)
        for y in range(32):
            for x in range(32):
                near = [(y + dy, x + dx) for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0))]
                edge[y, x] = inst[y, x] > 0 and any(0 <= a < 32 and 0 <= b < 32 and inst[a, b] != inst[y, x]
                                                    for a, b in near)
        np.testing.assert_array_equal(s.fields["contours"][i, 0].numpy(), edge * 255)


def test_labels_name_the_largest_visible_objects_shape():
    p = params(100, seed=7)
    r = sc.render(p, 32)
    s = sc.annotate(p, r)
    for i in range(100):
        area = Counter(r.slot[i].flatten().tolist())
        area.pop(-1, None)
        largest = max(area.values())
        assert int(s.labels[i]) in {int(p.shape[i, k]) for k, a in area.items() if a == largest}


def test_every_caption_names_each_visible_object():
    p = params(200, seed=8)
    r = sc.render(p, 32)
    s = sc.annotate(p, r)
    texts = decode_texts(s.fields["text"])
    for i, text in enumerate(texts):
        slots = sorted(set(r.slot[i].unique().tolist()) - {-1})
        assert text.count("a ") >= len(slots) and text.count(" and ") == (len(slots) > 1)
        assert text.count(", ") == max(len(slots) - 2, 0)
        for j, k in enumerate(slots):
            x0, y0, x1, y1 = s.fields["boxes"][i, j].tolist()
            where = sc.POSITIONS[min(int((y0 + y1) / 2 / 32 * 3), 2)][min(int((x0 + x1) / 2 / 32 * 3), 2)]
            phrase = f"a {sc.SIZES[p.size[i, k]]} {sc.COLORS[p.color[i, k]]} {sc.SHAPES[p.shape[i, k]]} {where}"
            assert phrase in text, (phrase, text)
        assert len(text.encode()) < s.fields["text"].shape[1]  # never cut
    assert sc.caption_length(3) >= max(len(t.encode()) for t in texts) and sc.caption_length(1) == 128


def test_bad_arguments_are_user_errors():
    from selfsup.errors import UserError

    with pytest.raises(UserError, match="max_objects"):
        sc.render_scenes(4, 16, max_objects=10)
    with pytest.raises(UserError, match="size"):
        sc.render_scenes(4, 2)


# ---- training and files ------------------------------------------------------------------------------------------


def test_rotnet_trains_on_scenes(tmp_path):
    cfg = selfsup.TrainConfig(method="rotnet", data="scenes", steps=4, batch_size=32, image_size=16, device="cpu",
                              log_every=2)
    run = selfsup.train(cfg, tmp_path / "run", show_progress=False, evaluate=False,
                        data=sc.scenes(train=64, test=32, size=16))
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "run" / "metrics.csv"))]
    assert run.metrics["steps"] == 4 and len(losses) == 2 and all(math.isfinite(v) for v in losses)


def _read_voc(root, split):
    ids = (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    out = []
    for name in ids:
        ann = ET.parse(root / "Annotations" / f"{name}.xml").getroot()
        objects = [(o.find("name").text, [float(o.find("bndbox").find(t).text) for t in ("xmin", "ymin", "xmax",
                                                                                          "ymax")])
                   for o in ann.iter("object")]
        out.append((np.array(Image.open(root / "JPEGImages" / f"{name}.jpg")),
                    np.array(Image.open(root / "SegmentationClass" / f"{name}.png")),
                    [(n, [b[0] - 1, b[1] - 1, b[2], b[3]]) for n, b in objects],
                    (int(ann.find("size").find("width").text), int(ann.find("size").find("height").text))))
    return out


def test_voc_and_coco_files_round_trip(tmp_path):
    ds = sc.scenes(train=6, test=4, size=24)
    write_voc(ds, tmp_path / "voc")
    labels = (tmp_path / "voc" / "labels.txt").read_text().split()
    assert labels == ["background", *sc.SHAPES]
    for split, part in (("train", ds.train), ("val", ds.test)):
        read = _read_voc(tmp_path / "voc", split)
        assert len(read) == len(part)
        for i, (img, seg, objects, size) in enumerate(read):
            assert size == (24, 24)
            assert np.abs(img.astype(int) - part.images[i].permute(1, 2, 0).numpy()).mean() < 3  # JPEG
            np.testing.assert_array_equal(seg, part.fields["segmentation"][i].numpy())
            want = [(sc.SHAPES[c - 1], b) for c, b in zip(part.fields["box_labels"][i].tolist(),
                                                          part.fields["boxes"][i].tolist()) if c > 0]
            assert objects == want
    written = write_coco(ds, tmp_path / "coco")
    for split, part in (("train", ds.train), ("val", ds.test)):
        coco = json.loads(written[split].read_text())
        assert [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])] == list(sc.SHAPES)
        assert len(coco["images"]) == len(part)
        for i, image in enumerate(coco["images"]):
            assert (tmp_path / "coco" / split / image["file_name"]).exists()
            anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
            got = [(a["category_id"], [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                       a["bbox"][1] + a["bbox"][3]]) for a in anns]
            want = [(c, b) for c, b in zip(part.fields["box_labels"][i].tolist(), part.fields["boxes"][i].tolist())
                    if c > 0]
            assert got == want
            assert [a["area"] for a in anns] == [float((part.fields["instances"][i] == j + 1).sum())
                                                 for j in range(len(anns))]
        captions = json.loads((tmp_path / "coco" / "annotations" / f"captions_{split}.json").read_text())
        assert [c["caption"] for c in captions["annotations"]] == decode_texts(part.fields["text"])
