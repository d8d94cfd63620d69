"""Fields from files beside a folder's images (selfsup.data.sidecars): ``photo.txt`` gives ``photo.jpg`` its caption,
``photo.npy`` its vector, in memory and streamed, through subsets, the engine's batches and a training run."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup
from selfsup.data import load_data
from selfsup.data.sources import ImageSet
from selfsup.data.stream import FileImages
from selfsup.data.text import decode_texts
from selfsup.engine.batches import batches
from tests.test_shard_fields import recorded_run


def grey(path: Path, value: int) -> Path:
    """A flat grey 8x8 PNG: every decoded pixel is ``value``, which names the image in a batch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value,) * 3).save(path)
    return path


def caption(stem: str) -> str:
    return f"the photo {stem}, größer ★"


def value(stem: str) -> int:
    """The grey level of the image named ``stem`` (``c1-img04``: 10 + 4 x 7 + 1)."""
    c, i = (int(part[-2:]) for part in stem.split("-"))
    return 10 + 7 * i + c


def captioned_folder(root: Path, classes: int = 0, per_class: int = 12, vectors: bool = False) -> Path:
    """Images ``c{c}-img{i}.png`` (in class folders ``class{c}`` when ``classes``, else flat), each with its caption
    in a ``.txt`` (padded with whitespace) and, with ``vectors``, ``[c, i, value]`` in a ``.npy``."""
    for c in range(max(classes, 1)):
        for i in range(per_class):
            stem = f"c{c:02d}-img{i:02d}"
            image = grey(root / (f"class{c}" if classes else "") / f"{stem}.png", value(stem))
            image.with_suffix(".txt").write_text(f"  {caption(stem)}\n", encoding="utf-8")
            if vectors:
                np.save(image.with_suffix(".npy"), np.array([c, i, value(stem)], dtype=np.int16))
    return root


def assert_aligned(s: ImageSet, rows: torch.Tensor | None = None, images: torch.Tensor | None = None,
                   fields: dict[str, torch.Tensor] | None = None) -> None:
    """Samples ``rows`` of ``s`` (default: all) carry their own image, caption and (if any) vector."""
    rows = torch.arange(len(s)) if rows is None else rows
    images = s.images[rows] if images is None else images
    fields = s.fields if fields is None else fields
    for j, i in enumerate(rows.tolist()):
        stem = Path(s.paths[i]).stem
        assert int(images[j, 0, 0, 0]) == value(stem)
        expected = "" if "nocap" in stem else caption(stem)
        assert decode_texts(fields["text"][j : j + 1]) == [expected]
        if "vector" in fields:
            assert fields["vector"][j].tolist() == [int(stem[1:3]), int(stem[-2:]), value(stem)]


def test_captions_arrive_with_their_images_and_orphans_and_images_without_one_are_reported_once(tmp_path, capsys):
    root = captioned_folder(tmp_path / "flat")
    grey(root / "c03-nocap05.png", value("c03-nocap05"))  # no caption: gets an empty one
    (root / "ghost.txt").write_text("a caption without its image")
    data = load_data(str(root), 8)
    s = data.pretrain
    assert len(s) == 13 and set(s.fields) == {"text"} and s.fields["text"].dtype == torch.uint8
    assert s.fields["text"].shape == (13, 128)
    assert_aligned(s)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert "skipped 1 caption or vector file(s) without an image" in err[0] and "ghost.txt" in err[0]
    assert "note: 1 image(s)" in err[1] and "have no caption" in err[1] and "c03-nocap05.png" in err[1]


def test_a_folder_without_captions_has_no_text_field_and_says_nothing(tmp_path, capsys):
    root = tmp_path / "plain"
    for i in range(4):
        grey(root / f"c00-img{i:02d}.png", i)
    assert load_data(str(root), 8).pretrain.fields == {} and capsys.readouterr().err == ""


def test_class_folders_keep_captions_aligned_through_the_held_out_split(tmp_path):
    data = load_data(str(captioned_folder(tmp_path / "classes", classes=3, per_class=6)), 8)
    assert len(data.pretrain) + len(data.test) == 18 and len(data.test) > 0
    for s in (data.pretrain, data.test):
        assert_aligned(s)
        assert [int(Path(p).stem[1:3]) for p in s.paths] == s.labels.tolist()


def test_an_unreadable_image_takes_its_caption_along_without_an_orphan_report(tmp_path, capsys):
    root = captioned_folder(tmp_path / "f", per_class=6)
    (root / "c00-img02.png").write_bytes(b"not an image")
    data = load_data(str(root), 8)
    assert data.skipped == [str(root / "c00-img02.png")] and len(data.pretrain) == 5
    assert_aligned(data.pretrain)
    err = capsys.readouterr().err
    assert "unreadable image" in err and "without an image" not in err


def test_vectors_beside_every_image_become_a_float32_field(tmp_path):
    s = load_data(str(captioned_folder(tmp_path / "v", per_class=5, vectors=True)), 8).pretrain
    assert s.fields["vector"].dtype == torch.float32 and s.fields["vector"].shape == (5, 3)
    assert_aligned(s)


@pytest.mark.parametrize("damage, reason", [
    (lambda f: f.unlink(), "no .npy beside it"),
    (lambda f: np.save(f, np.zeros(4)), "shape (4,), where most have (3,)"),
    (lambda f: f.write_bytes(b"garbage"), "its .npy is not a readable array"),
    (lambda f: np.save(f, np.array(["a", "b", "c"])), "not numbers"),
])
def test_vectors_missing_or_unlike_for_some_image_give_no_field_and_one_warning(tmp_path, capsys, damage, reason):
    root = captioned_folder(tmp_path / "v", per_class=5, vectors=True)
    damage(root / "c00-img03.npy")
    s = load_data(str(root), 8).pretrain
    assert set(s.fields) == {"text"}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "c00-img03.png" in err[0] and reason in err[0], err


def test_a_streamed_folder_carries_its_fields_through_subsets_batches_and_the_engine(tmp_path):
    root = captioned_folder(tmp_path / "classes", classes=2, per_class=8, vectors=True)
    data = load_data(str(root), 8, stream=True)
    s = data.pretrain
    assert isinstance(s.images, FileImages) and set(s.fields) == {"text", "vector"}
    for part in (s, data.test):  # subsets of the streamed set slice the fields the workers' batches carry
        assert part.images.fields.keys() == part.fields.keys()
        assert all(torch.equal(part.images.fields[k], v) for k, v in part.fields.items())
        assert_aligned(part)
    order = torch.randperm(len(s), generator=torch.Generator().manual_seed(0))
    got = list(s.images.batches(order, 0, 4, 2, False, s.labels))
    assert len(got) == len(s) // 4
    for idx, x, y, fields in got:
        assert_aligned(s, idx, x, fields)
        assert torch.equal(y, s.labels[idx])
    cfg = selfsup.TrainConfig(method="simclr", data="x", batch_size=4, steps=3, device="cpu", workers=1)
    for b in batches(s, s.images, None, cfg, 0, 3, 3, torch.device("cpu"), lambda: None, lambda e: None, None):
        assert_aligned(s, b.indices, b.images, b.fields)


@pytest.mark.parametrize("stream", [False, True])
def test_a_training_run_hands_the_method_each_images_caption_and_vector(tmp_path, monkeypatch, stream):
    torch.set_num_threads(1)
    root = captioned_folder(tmp_path / "flat", per_class=10, vectors=True)
    s = load_data(str(root), 8, stream=stream).pretrain
    for b in recorded_run(monkeypatch, tmp_path, str(root), stream=stream):
        assert set(b.fields) == {"text", "vector"}
        assert_aligned(s, b.indices, b.images, b.fields)
