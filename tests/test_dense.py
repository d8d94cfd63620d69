"""Dense transfer: the paired crop / flip of images, masks and boxes against torchvision image by image, mIoU and AP
against references written out by hand, the VOC / COCO / ImageSet readers on tiny fixtures (and their bad inputs),
and short fine-tunings on tiny generated scenes that beat the untrained networks."""

import copy
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

import selfsup
from selfsup.backbones import build_backbone
from selfsup.backbones.inputs import InputEncoder, Lightness
from selfsup.data.dense import DenseSet, from_image_set, load_coco, load_voc
from selfsup.data.ops.color import sample_flags
from selfsup.data.ops.crop import sample_resized_crop
from selfsup.data.ops.dense import crop_boxes, dense_views, flip_boxes
from selfsup.data.sources import ImageSet
from selfsup.errors import UserError
from selfsup.evaluate.detection import average_precision, build_detector, detect, evaluate_detection, match, mean_ap
from selfsup.evaluate.rescale import random_rescaled
from selfsup.evaluate.segmentation import SegmentationNet, confusion, evaluate_segmentation, scores_of, segment
from selfsup.evaluate.transfer import dense_table, spatial_levels

CLASSES = ["background", "square", "disc"]
COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.2, 0.9]])


def tiny_scenes(n: int, size: int = 32, seed: int = 0) -> DenseSet:
    """``n`` noisy grey images with 1-2 objects each (class 1: a red square, class 2: a blue disc), their masks and
    boxes."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 0.3 + 0.35
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    boxes, labels = torch.full((n, 2, 4), -1.0), torch.full((n, 2), -1)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for i in range(n):
        for j in range(int(torch.randint(1, 3, (1,), generator=g))):
            c = int(torch.randint(1, 3, (1,), generator=g))
            s = int(torch.randint(size // 5, size // 2, (1,), generator=g))
            x0, y0 = (int(torch.randint(0, size - s, (1,), generator=g)) for _ in range(2))
            inside = (xx > x0) & (xx < x0 + s) & (yy > y0) & (yy < y0 + s)
            if c == 2:
                inside = (xx - x0 - s / 2) ** 2 + (yy - y0 - s / 2) ** 2 <= (s / 2) ** 2
            images[i][:, inside] = COLOURS[c - 1][:, None]
            masks[i][inside] = c
            boxes[i, j], labels[i, j] = torch.tensor([x0, y0, x0 + s, y0 + s], dtype=torch.float), c
    return DenseSet((images * 255).round().to(torch.uint8), CLASSES, masks, boxes, labels)


@pytest.fixture(scope="module")
def scenes():
    full = tiny_scenes(96)
    return full.subset(torch.arange(64)), full.subset(torch.arange(64, 96))


# ---- paired augmentation ----

def test_dense_views_crop_and_flip_image_mask_and_boxes_as_torchvision_does_image_by_image():
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (6, 3, 20, 24), generator=g, dtype=torch.uint8)
    masks = torch.randint(0, 5, (6, 20, 24), generator=g, dtype=torch.uint8)
    corner = torch.rand(6, 3, 2, generator=g) * torch.tensor([16.0, 12.0])  # x1, y1; x2, y2 may leave the image
    boxes = torch.cat([corner, corner + 2 + torch.rand(6, 3, 2, generator=g) * 10], -1)
    labels = torch.tensor([[1, 2, -1]] * 6)
    x, m, b, lab = dense_views(images, 16, torch.Generator().manual_seed(7), masks, boxes, labels, scale=(0.2, 1.0))
    ref = torch.Generator().manual_seed(7)  # the same draws: crops, then flips
    crops = sample_resized_crop(6, 20, 24, (0.2, 1.0), (3 / 4, 4 / 3), ref)
    flips = sample_flags(6, 0.5, ref)
    assert 0 < flips.sum() < 6
    for i, ((top, left, h, w), flip) in enumerate(zip(crops.long().tolist(), flips.tolist())):
        image = TF.resized_crop(images[i].float() / 255, top, left, h, w, [16, 16], antialias=False)
        mask = TF.resized_crop(masks[i][None], top, left, h, w, [16, 16], InterpolationMode.NEAREST_EXACT)[0]
        box = TF.resized_crop(tv_tensors.BoundingBoxes(boxes[i, :2], format="XYXY", canvas_size=(20, 24),
                                                       clamping_mode="hard"), top, left, h, w, [16, 16])
        if flip:
            image, mask, box = TF.horizontal_flip(image), TF.horizontal_flip(mask), TF.horizontal_flip(box)
        keep = ((box[:, 2:] - box[:, :2]) >= 1).all(1)
        torch.testing.assert_close(x[i], image, atol=1e-5, rtol=0)
        assert torch.equal(m[i], mask)
        torch.testing.assert_close(b[i][lab[i] > 0], box.as_subclass(torch.Tensor)[keep], atol=1e-4, rtol=0)
        assert lab[i].tolist() == [1 if keep[0] else -1, 2 if keep[1] else -1, -1]
        assert (b[i][lab[i] < 0] == -1).all()


def test_boxes_cut_off_by_the_crop_are_left_out_and_padding_stays_padding():
    boxes = torch.tensor([[[2.0, 2.0, 6.0, 6.0], [14.0, 14.0, 19.0, 18.0], [10.0, 0.0, 30.0, 9.0], [-1, -1, -1, -1]]])
    labels = torch.tensor([[1, 2, 3, -1]])
    crop = torch.tensor([[4.0, 4.0, 10.0, 10.0]])  # rows 4..14, cols 4..14, resized x2 to 20 px
    out, lab = crop_boxes(boxes, labels, crop, 20)
    assert lab.tolist() == [[1, -1, 3, -1]]  # the second box touches the crop only at its corner: 0 px
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 0.0, 4.0, 4.0]))
    torch.testing.assert_close(out[0, 2], torch.tensor([12.0, 0.0, 20.0, 10.0]))
    flipped = flip_boxes(out, lab, torch.tensor([True]), 20)
    torch.testing.assert_close(flipped[0, 0], torch.tensor([16.0, 0.0, 20.0, 4.0]))
    assert (flipped[0, [1, 3]] == -1).all()


def test_flips_follow_their_probability_and_move_image_mask_and_boxes_together():
    image = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    image[..., :2] = 255  # the left two columns white, as the mask's class 1 and the box
    n = 2000
    boxes = torch.tensor([[[0.0, 0.0, 2.0, 8.0]]]).expand(n, -1, -1)
    x, m, b, _ = dense_views(image.expand(n, -1, -1, -1), 8, torch.Generator().manual_seed(0),
                             (image[:, 0] // 255).expand(n, -1, -1), boxes, torch.ones(n, 1, dtype=torch.long),
                             scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.3)
    flipped = x[:, 0, 0, -1] == 1
    assert abs(flipped.float().mean().item() - 0.3) < 0.04
    assert torch.equal(m[:, 0, -1] == 1, flipped) and torch.equal(b[:, 0, 0] == 6, flipped)


# ---- metrics ----

def test_confusion_and_scores_match_a_loop_over_pixels():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 9, 7), generator=g, dtype=torch.uint8)
    target[0, :2] = 255
    pred = torch.randint(0, 5, (3, 9, 7), generator=g) % 4
    pred[pred == 3] = 2  # class 3 is never predicted; class 4 is absent from both
    k = 5
    got = scores_of(confusion(target, pred, k))
    ious, right, counted = [], 0, 0
    for c in range(k):
        tp = fp = fn = 0
        for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
            if t == 255:
                continue
            tp += t == c and p == c
            fp += t != c and p == c
            fn += t == c and p != c
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            counted, right = counted + 1, right + (t == p)
    assert len(ious) == 4
    assert got["miou"] == pytest.approx(sum(ious) / len(ious), abs=1e-12)
    assert got["pixel_acc"] == pytest.approx(right / counted, abs=1e-12)


def test_voc_matching_gives_a_box_to_the_detection_that_overlaps_it_most_first():
    ious = torch.tensor([[0.9, 0.6], [0.8, 0.7], [0.3, 0.55], [0.2, 0.4]])
    assert match(ious, 0.5).tolist() == [True, False, True, False]  # the second's best box is taken: a miss
    assert match(ious, 0.85).tolist() == [True, False, False, False]
    assert match(torch.zeros(3, 0), 0.5).tolist() == [False] * 3


def box(x1, y1, x2, y2):
    return [float(x1), float(y1), float(x2), float(y2)]


def test_mean_ap_matches_a_hand_computed_case():
    truths = [{"boxes": torch.tensor([box(0, 0, 10, 10), box(20, 20, 30, 30)]), "labels": torch.tensor([1, 1])},
              {"boxes": torch.tensor([box(0, 0, 10, 10), box(40, 40, 50, 50)]), "labels": torch.tensor([1, 2])}]
    detections = [{"boxes": torch.tensor([box(0, 0, 10, 10), box(0, 0, 10, 9), box(20, 20, 30, 30), box(0, 0, 5, 5)]),
                   "scores": torch.tensor([0.9, 0.8, 0.5, 0.3]), "labels": torch.tensor([1, 1, 1, 3])},
                  {"boxes": torch.tensor([box(0, 0, 10, 8), box(50, 50, 60, 60)]),
                   "scores": torch.tensor([0.7, 0.6]), "labels": torch.tensor([1, 1])}]
    # class 1 in score order: TP (0.9), duplicate FP (0.8, IoU 0.9 with a taken box), TP (0.7, IoU 0.8), FP (0.6), TP
    # (0.5): precision 1, 1/2, 2/3, 1/2, 3/5 at recall 1/3, 1/3, 2/3, 2/3, 1; interpolated 1, 2/3, 3/5 -> AP 34/45.
    # At IoU 0.85 the 0.7 detection misses too: precision 1 at 1/3, 2/5 at 2/3 -> AP 1/3 + 2/15 = 7/15.
    # Class 2 has a box and no detection (AP 0); class 3 has no box (left out of the mean).
    got = mean_ap(detections, truths, (0.5, 0.85))
    assert got[0.5] == pytest.approx((34 / 45 + 0) / 2)
    assert got[0.85] == pytest.approx((7 / 15 + 0) / 2)
    assert average_precision(torch.tensor([], dtype=torch.bool), 3) == 0.0
    assert average_precision(torch.tensor([True, True]), 2) == pytest.approx(1.0)


# ---- readers ----

def voc_folder(root, objects=None, split_files=True):
    """Two 40x30 images (PNG, exact) whose red channel is their mask * 100, masks with an unscored 255 pixel, VOC XML
    with 1-based inclusive boxes; classes.txt names 'cat' and 'dog'."""
    for d in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("background\ncat\ndog\n")
    objects = objects or {"a": [("cat", (1, 1, 10, 8)), ("dog", (21, 11, 40, 30))], "b": [("dog", (6, 6, 15, 15))]}
    for i, stem in enumerate(("a", "b")):
        mask = np.zeros((30, 40), np.uint8)
        for name, (x1, y1, x2, y2) in objects.get(stem, []):
            mask[max(0, int(y1) - 1) : int(y2), max(0, int(x1) - 1) : int(x2)] = 1 + (name == "dog")
        mask[0, 39] = 255
        pal = Image.fromarray(mask, "P")
        pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 253)
        pal.save(root / "SegmentationClass" / f"{stem}.png")
        rgb = np.stack([np.minimum(mask * 100, 250), np.full_like(mask, 10 * i), np.zeros_like(mask)], -1)
        Image.fromarray(rgb.astype(np.uint8)).save(root / "JPEGImages" / f"{stem}.png")
        ann = ET.Element("annotation")
        for name, (x1, y1, x2, y2) in objects.get(stem, []):
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = name
            bnd = ET.SubElement(obj, "bndbox")
            for k, v in zip(("xmin", "ymin", "xmax", "ymax"), (x1, y1, x2, y2)):
                ET.SubElement(bnd, k).text = str(v)
        ET.ElementTree(ann).write(root / "Annotations" / f"{stem}.xml")
    if split_files:
        (root / "ImageSets/Segmentation/train.txt").write_text("a\nb\n")
        (root / "ImageSets/Segmentation/val.txt").write_text("b\n")
    return root


def test_voc_folders_give_masks_and_boxes_through_the_images_resize_and_centre_crop(tmp_path):
    ds = load_voc(voc_folder(tmp_path), "train", size=30)
    assert ds.classes == ["background", "cat", "dog"] and len(ds) == 2 and ds.images.shape == (2, 3, 30, 30)
    # 40x30 -> 30x30: columns 5..34 kept; the red channel is the mask * 100 except at the 255 pixel (cut off here)
    assert torch.equal(ds.images[:, 0].long(), ds.segmentation.long() * 100)
    assert ds.boxes[0, :2].tolist() == [[0.0, 0.0, 5.0, 8.0], [15.0, 10.0, 30.0, 30.0]]
    assert ds.box_labels.tolist() == [[1, 2], [2, -1]]
    half = load_voc(tmp_path, "val", size=15)
    assert half.images.shape == (1, 3, 15, 15)
    # 40x30 -> 20x15, columns 2..16 kept: the box (5, 5, 15, 15) halves, then moves 2 px left
    assert half.boxes[0, 0].tolist() == [0.5, 2.5, 5.5, 7.5]
    assert len(load_voc(tmp_path)) == 2  # no split: every mask's id


def test_voc_bad_files_are_skipped_or_dropped_and_counted_and_bad_folders_are_one_line_errors(tmp_path, capsys):
    root = voc_folder(tmp_path / "voc", {"a": [("cat", (1, 1, 10, 8)), ("cat", (50, 40, 60, 45))], "b": []})
    ds = load_voc(root, "train")
    assert len(ds) == 1 and len(ds.skipped) == 1 and "no objects" in ds.skipped[0]
    assert len(ds.dropped) == 1 and "no area inside the 40x30 image" in ds.dropped[0]
    err = capsys.readouterr().err
    assert "skipped unreadable or unannotated file(s): 1" in err and "dropped box(es): 1" in err
    (root / "SegmentationClass" / "a.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="none of the 2 annotated images"):
        load_voc(root, "train")
    odd = voc_folder(tmp_path / "odd", {"a": [("horse", (1, 1, 5, 5))]})
    with pytest.raises(UserError, match="names the class 'horse'"):
        load_voc(odd, "train")
    with pytest.raises(UserError, match="no JPEGImages"):
        load_voc(tmp_path / "nowhere")
    with pytest.raises(UserError, match="ImageSets/Segmentation/test.txt"):
        load_voc(root, "test")


def test_coco_boxes_become_xyxy_with_categories_numbered_from_one(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    for name in ("p.png", "q.png"):
        Image.new("RGB", (20, 20), (30, 60, 90)).save(tmp_path / "img" / name)
    data = {"images": [{"id": 5, "file_name": "p.png"}, {"id": 6, "file_name": "q.png"},
                       {"id": 7, "file_name": "missing.png"}],
            "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 5, "category_id": 7, "bbox": [2, 3, 4, 5]},
                            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 1},
                            {"id": 3, "image_id": 6, "category_id": 9, "bbox": [0, 0, 1, 1]},
                            {"id": 4, "image_id": 6, "category_id": 3, "bbox": [30, 30, 5, 5]}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    ds = load_coco(tmp_path / "img", tmp_path / "ann.json")
    assert ds.classes == ["background", "cat", "dog"] and ds.images.shape == (2, 3, 20, 20)
    assert ds.boxes[0, 0].tolist() == [2.0, 3.0, 6.0, 8.0] and ds.box_labels.tolist() == [[2], [-1]]
    assert ds.segmentation is None and len(ds.skipped) == 1 and "no such image" in ds.skipped[0]
    assert len(ds.dropped) == 2  # the unknown category and the box outside its image
    assert "dropped annotation(s): 1" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="no COCO instance file"):
        load_coco(tmp_path / "img", tmp_path / "bad.json")


def test_image_sets_with_dense_fields_become_dense_sets(scenes):
    train, _ = scenes
    s = ImageSet(train.images, fields={"segmentation": train.segmentation, "boxes": train.boxes,
                                       "box_labels": train.box_labels})
    ds = from_image_set(s)
    assert ds.classes == ["background", "class1", "class2"] and torch.equal(ds.boxes, train.boxes)
    assert from_image_set(s, ["square", "disc"]).classes == CLASSES
    with pytest.raises(UserError, match="segmentation or boxes field"):
        from_image_set(ImageSet(train.images))
    with pytest.raises(UserError, match="segmentation must be uint8"):
        DenseSet(train.images, CLASSES, train.segmentation.long())


def test_the_generated_scenes_name_their_dense_classes_by_shape():
    scenes = pytest.importorskip("selfsup.data.scenes")
    ds = from_image_set(scenes.render_scenes(6, 16))
    assert ds.classes == ["background", *scenes.SHAPES] and ds.boxes.shape[::2] == (6, 4)
    assert ds.segmentation.max() <= len(scenes.SHAPES) and ds.box_labels.max() <= len(scenes.SHAPES)


def test_scenes_written_as_voc_and_coco_read_back_as_they_were(tmp_path):
    scenes = pytest.importorskip("selfsup.data.scenes")
    annotations = pytest.importorskip("selfsup.data.annotations")
    s = scenes.render_scenes(8, 24, seed=1)
    full = from_image_set(s)
    annotated = full.subset(torch.nonzero((full.box_labels > 0).any(1)).flatten())  # VOC skips files without objects
    voc = load_voc(annotations.write_voc(s, tmp_path / "voc"), "train")
    coco = load_coco(tmp_path / "coco" / "train", annotations.write_coco(s, tmp_path / "coco")["train"])
    for got, want in ((voc, annotated), (coco, full)):
        assert got.classes == ["background", *scenes.SHAPES]
        assert torch.equal(got.boxes, want.boxes) and torch.equal(got.box_labels, want.box_labels)
        assert (got.images.float() - want.images.float()).abs().mean() < 3  # JPEG quality 95
    assert torch.equal(voc.segmentation, annotated.segmentation)


# ---- fine-tuning ----

def small(seed=0):
    torch.manual_seed(seed)
    return build_backbone("small", 32, width=0.25)


def test_stage_levels_come_from_any_encoder_with_stage_maps_and_a_foreign_one_is_a_one_line_error():
    levels = spatial_levels(small(), 32, 3, torch.device("cpu"))
    assert [(lv.index, lv.channels, lv.stride) for lv in levels] == [(1, 16, 2), (2, 32, 4), (3, 64, 8)]
    wrapped = InputEncoder(Lightness(), build_backbone("small", 32, in_channels=1, width=0.25))
    assert [lv.stride for lv in spatial_levels(wrapped, 32, 2, torch.device("cpu"))] == [4, 8]
    with pytest.raises(UserError, match="no spatial stage maps"):
        spatial_levels(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(4)), 32, 3, torch.device("cpu"))


def test_segmentation_fine_tuning_beats_the_untrained_network_and_leaves_the_callers_untouched(scenes):
    train, test = scenes
    encoder = small()
    before = copy.deepcopy(encoder.state_dict())
    untrained = evaluate_segmentation(SegmentationNet(copy.deepcopy(encoder), 3, 32, dim=32), test, 32)
    out = segment(encoder, train, test, epochs=3, batch_size=16, lr=0.05, dim=32)
    assert len(out["curve"]) == 3 and out["miou"] == out["curve"][-1]
    assert out["miou"] > untrained["miou"] + 0.15 and out["pixel_acc"] > untrained["pixel_acc"]
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())


def test_detection_fine_tuning_beats_the_untrained_network(scenes):
    train, test = scenes
    encoder = small()
    untrained = evaluate_detection(build_detector(copy.deepcopy(encoder), 3, 32, dim=32, head_convs=2), test, 32)
    out = detect(encoder, train, test, epochs=3, batch_size=8, lr=0.01, dim=32, head_convs=2)
    assert len(out["curve"]) == 3 and out["map50"] == out["curve"][-1] and 0 <= out["map"] <= out["map50"]
    assert out["map50"] > untrained["map50"] + 0.1


def test_the_table_runs_random_init_and_random_rescaled_encoders(scenes):
    train, test = scenes
    rescaled = random_rescaled(small(1), train.images, 32, count=32, iterations=2)
    table = dense_table({"random init": small(), "random rescaled": rescaled}, train.subset(torch.arange(16)), test,
                        segmentation={"epochs": 1, "dim": 32}, detection={"epochs": 1, "dim": 32, "head_convs": 1})
    assert set(table) == {"random init", "random rescaled"}
    assert all(set(row) == {"miou", "pixel_acc", "map50", "map"} for row in table.values())


@pytest.mark.parametrize("kwargs, fragment", [({"epochs": 0}, "positive number of epochs"),
                                              ({"lr": 0.0}, "lr must be positive"),
                                              ({"levels": 0}, "levels must be at least 1")])
def test_bad_settings_are_one_line_errors(scenes, kwargs, fragment):
    train, test = scenes
    with pytest.raises(UserError, match=fragment):
        segment(small(), train, test, **kwargs)
    with pytest.raises(UserError, match="has no boxes"):
        detect(small(), train, DenseSet(test.images, CLASSES, test.segmentation))


def test_cli_dense_protocols_on_a_voc_folder_and_bad_specs(tmp_path, capsys):
    """``selfsup eval segmentation|detection`` read the formats users have (here a VOC folder written from generated
    scenes, split 80/20 without split lists) and print one row per kind; a bad spec is one line, exit 2."""
    pytest.importorskip("selfsup.data.scenes")
    from selfsup.cli import main
    from selfsup.data.annotations import write_voc
    from selfsup.data.dense_sources import load_dense
    from selfsup.data.scenes import render_scenes

    root = write_voc(render_scenes(20, size=16, seed=3), tmp_path / "voc")
    train, test = load_dense(str(root))
    assert (len(train), len(test)) == (16, 4) and train.segmentation is not None and train.boxes is not None
    run = tmp_path / "run"
    selfsup.train(selfsup.TrainConfig(method="rotnet", data="digits", steps=2, batch_size=16, device="cpu"), run,
                  show_progress=False, evaluate=False)
    for protocol, column in (("segmentation", "mIoU %"), ("detection", "mAP@0.5 %")):
        assert main(["eval", protocol, "--checkpoint", str(run), "--data", str(root), "--epochs", "1",
                     "--init", "pretrained", "--init", "random"]) == 0
        out = capsys.readouterr().out
        assert column in out and "random init" in out and "random rescaled" not in out
    assert main(["eval", "detection", "--checkpoint", str(run), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no dense data set" in err[0]
