"""Fields from WebDataset tar shards (selfsup.data.shards): a key's .txt, .json and .npy members travel with its image
through the stream, the engine's batches and a training run; keys with a missing or broken part are skipped and
counted."""

import io
import json
import tarfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import selfsup
from selfsup.data import load_data
from selfsup.data.text import decode_texts
from selfsup.engine.batches import batches
from selfsup.errors import UserError
from selfsup.methods import METHODS, Method
from selfsup.methods.base import Batch


def png(value: int, size: int = 8) -> bytes:
    """A flat grey PNG: every decoded pixel is ``value``, which names the sample in a batch."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value,) * 3).save(buf, format="PNG")
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def caption(i: int) -> str:
    return f"sample {i}: a grey square, größer ★"


def members(i: int) -> dict[str, bytes]:
    """Sample ``i``: its image (grey level 10 i), caption, JSON (label, a score, a box) and vector."""
    entries = {"label": i % 3, "score": i / 10, "box": [i, i + 1, i + 2, i + 3], "name": f"s{i}"}
    return {f"k{i:03d}.png": png(10 * i), f"k{i:03d}.txt": caption(i).encode(),
            f"k{i:03d}.json": json.dumps(entries).encode(), f"k{i:03d}.npy": npy(np.arange(5.0) + i)}


def shards(tmp_path: Path, n: int = 24, per_shard: int = 6) -> str:
    for s in range(0, n, per_shard):
        write_tar(tmp_path / f"s-{s // per_shard}.tar",
                  {k: v for i in range(s, min(n, s + per_shard)) for k, v in members(i).items()})
    return f"wds:{tmp_path}/s-{{0..{(n - 1) // per_shard}}}.tar"


def assert_aligned(idx: torch.Tensor, images: torch.Tensor, fields: dict[str, torch.Tensor], sample_of) -> None:
    """Every row of a batch is one sample: the grey level of its image, its caption, JSON entries and vector."""
    for j, pos in enumerate(idx.tolist()):
        i = sample_of[pos]
        assert int(images[j, 0, 0, 0]) == 10 * i
        assert decode_texts(fields["text"][j : j + 1]) == [caption(i)]
        assert float(fields["score"][j]) == pytest.approx(i / 10)
        assert fields["box"][j].tolist() == [i, i + 1, i + 2, i + 3]
        assert fields["vector"][j].tolist() == list(np.arange(5.0) + i)


def test_shard_members_become_fields_of_the_right_dtype_and_arrive_with_their_images(tmp_path):
    data = load_data(shards(tmp_path), 8)
    images = data.pretrain.images
    assert len(images) == 24 and data.skipped == [] and data.pretrain.labels.tolist() == [i % 3 for i in range(24)]
    assert {k: (tuple(t.shape), t.dtype) for k, t in images.schema.items()} == {
        "text": ((128,), torch.uint8), "vector": ((5,), torch.float32), "score": ((), torch.float32),
        "box": ((4,), torch.float32)}  # "name" is a string, "label" the label: neither is a field
    seen = []
    for idx, x, y, fields in images.batches(epoch_seed=1, rank=0, world=1, start=0, batch=4, workers=2, pin=False):
        assert x.dtype == fields["text"].dtype == torch.uint8 and fields["vector"].dtype == torch.float32
        assert_aligned(idx, x, fields, range(24))
        assert y.tolist() == [i % 3 for i in idx.tolist()]
        seen += idx.tolist()
    assert sorted(seen) == list(range(24))


def test_the_engine_puts_a_shards_fields_in_every_batch(tmp_path):
    data = load_data(shards(tmp_path), 8)
    cfg = selfsup.TrainConfig(method="simclr", data="x", batch_size=4, steps=8, device="cpu", workers=1)
    got = list(batches(data.pretrain, data.pretrain.images, None, cfg, 0, 8, 6, torch.device("cpu"), lambda: None,
                       lambda e: None, None))
    assert len(got) == 8
    for b in got:
        assert set(b.fields) == {"text", "vector", "score", "box"}
        assert_aligned(b.indices, b.images, b.fields, range(24))


class FieldRecorder(Method):
    """A test method: records every batch's indices, images and fields, and trains a linear probe on the
    backbone's features to nothing (so that a run takes steps)."""

    name = "field-recorder"
    paper = "none: a test of the engine's plumbing"
    seen: ClassVar[list[Batch]] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head = nn.Linear(self.feat_dim, 1)

    def training_step(self, batch: Batch) -> torch.Tensor:
        FieldRecorder.seen.append(Batch(batch.images.cpu(), batch.labels, batch.indices.cpu(), batch.generator,
                                        batch.progress, fields={k: v.cpu() for k, v in batch.fields.items()}))
        return self.head(self.backbone(batch.images.float() / 255)).pow(2).mean()


def recorded_run(monkeypatch, tmp_path: Path, data: str, steps: int = 2, **kw) -> list[Batch]:
    """The batches a ``steps``-step training run on ``data`` hands its method."""
    monkeypatch.setitem(METHODS, FieldRecorder.name, FieldRecorder)
    FieldRecorder.seen = []
    cfg = selfsup.TrainConfig(method=FieldRecorder.name, data=data, backbone="small", batch_size=4, image_size=8,
                              steps=steps, log_every=1, workers=1, device="cpu", **kw)
    run = selfsup.train(cfg, tmp_path / "run", evaluate=False, show_progress=False)
    assert run.metrics["steps"] == steps and len(FieldRecorder.seen) == steps
    return FieldRecorder.seen


def test_a_training_run_on_shards_hands_the_method_each_samples_fields(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    (tmp_path / "shards").mkdir()
    for b in recorded_run(monkeypatch, tmp_path, shards(tmp_path / "shards")):
        assert_aligned(b.indices, b.images, b.fields, range(24))


def test_keys_with_a_missing_or_broken_part_are_skipped_counted_and_reported_once(tmp_path, capsys):
    good = {k: v for i in (0, 1, 3, 6) for k, v in members(i).items()}
    broken = {k: v for i in (2, 4, 5, 7) for k, v in members(i).items()}
    broken["k002.json"] = b"{not json"  # unreadable
    del broken["k004.txt"]  # a part the others have is missing
    broken["k005.npy"] = npy(np.arange(3.0))  # the vector at another shape
    del broken["k007.png"]  # no image
    broken["k008.npy"] = b"\x93NUMPY garbage"  # a broken array
    broken["k008.png"] = png(80)
    order = sorted(good.keys() | broken.keys())
    write_tar(tmp_path / "s-0.tar", {k: good.get(k) or broken[k] for k in order})
    data = load_data(f"wds:{tmp_path}/s-0.tar", 8)
    shard = str(tmp_path / "s-0.tar")
    assert data.skipped == [f"k{i:03d} in {shard}" for i in (2, 4, 5, 7, 8)]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 5 sample(s)" in err[0] and "k002" in err[0] and "not valid JSON" in err[0]
    images = data.pretrain.images
    assert len(images) == 4 and data.pretrain.labels.tolist() == [0, 1, 0, 0]
    kept = [0, 1, 3, 6]
    assert [int(v) for v in images[torch.arange(4)][:, 0, 0, 0]] == [10 * i for i in kept]  # random access too
    batch = next(images.batches(0, 0, 1, 0, 4, 0, False))
    assert_aligned(batch[0], batch[1], batch[3], kept)
    assert capsys.readouterr().err == ""  # the stream reports nothing more


def test_the_first_shard_fixes_the_fields_and_later_extra_ones_are_ignored_with_a_note(tmp_path, capsys):
    plain = {f"a{i}.png": png(i) for i in range(4)}  # first shard: images alone
    write_tar(tmp_path / "s-0.tar", plain)
    write_tar(tmp_path / "s-1.tar", {k: v for i in range(4, 6) for k, v in members(i).items()})
    images = load_data(f"wds:{tmp_path}/s-{{0..1}}.tar", 8).pretrain.images
    assert len(images) == 6 and images.schema == {}
    assert all(len(item) == 3 for item in images.batches(0, 0, 1, 0, 3, 0, False))  # no fields: 3 items, as ever
    err = capsys.readouterr().err
    assert "note: 2 sample(s) have fields that not every sample of the first shard has at one shape (box, score, " \
           "text, vector)" in err


def test_json_entries_only_some_samples_have_or_of_varying_length_are_metadata_not_fields(tmp_path, capsys):
    entries = [{"score": 0.5, "boxes": [1, 2]}, {"score": 0.1, "boxes": [1, 2, 3, 4], "punsafe": 0.2},
               {"score": 0.7, "boxes": [], "punsafe": None}]
    write_tar(tmp_path / "s-0.tar", {k: v for i, e in enumerate(entries)
                                     for k, v in {f"k{i}.png": png(i), f"k{i}.json": json.dumps(e).encode()}.items()})
    data = load_data(f"wds:{tmp_path}/s-0.tar", 8)
    assert len(data.pretrain) == 3 and data.skipped == [] and list(data.pretrain.images.schema) == ["score"]
    (idx, _, _, fields), = data.pretrain.images.batches(0, 0, 1, 0, 3, 0, False)
    assert fields["score"].tolist() == pytest.approx([entries[i]["score"] for i in idx.tolist()])
    assert "3 sample(s) have fields that not every sample of the first shard has at one shape (boxes, punsafe)" \
        in capsys.readouterr().err


def test_json_labels_are_labels_and_bad_ones_are_one_line_errors(tmp_path):
    write_tar(tmp_path / "names.tar", {"a.png": png(1), "a.json": b'{"label": "cat"}', "b.png": png(2),
                                       "b.json": b'{"label": "dog"}'})
    assert load_data(f"wds:{tmp_path}/names.tar", 8).pretrain.labels is None  # class names are not labels
    write_tar(tmp_path / "both.tar", {"a.png": png(1), "a.cls": b"4", "a.json": b'{"label": 1}'})
    assert load_data(f"wds:{tmp_path}/both.tar", 8).pretrain.labels.tolist() == [4]  # .cls wins
    for bad in (b"-1", b"2.5"):
        write_tar(tmp_path / "bad.tar", {"a.png": png(1), "a.json": b'{"label": ' + bad + b"}"})
        with pytest.raises(UserError, match=r"shard '.*bad\.tar', sample 'a': the label entry of the \.json"):
            load_data(f"wds:{tmp_path}/bad.tar", 8)
    write_tar(tmp_path / "clash.tar", {"a.png": png(1), "a.npy": npy(np.zeros(2)), "a.json": b'{"vector": [1]}'})
    with pytest.raises(UserError, match="entry 'vector' names the field of its .npy member too"):
        load_data(f"wds:{tmp_path}/clash.tar", 8)


def test_a_part_over_the_member_limit_is_skipped_unread_with_its_sample(tmp_path, monkeypatch, capsys):
    big = npy(np.zeros(1000))
    write_tar(tmp_path / "s.tar", {"a.png": png(1), "a.npy": npy(np.zeros(3)), "b.png": png(2), "b.npy": big})
    read = []
    extract = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: read.append(m.name) or extract(self, m))
    monkeypatch.setenv("SELFSUP_MAX_MEMBER_MB", str(2048 / 2**20))
    data = load_data(f"wds:{tmp_path}/s.tar", 8)
    assert len(data.pretrain) == 1 and data.skipped == [f"b in {tmp_path / 's.tar'}"] and "b.npy" not in read
    assert "its .npy is larger than the limit" in capsys.readouterr().err
