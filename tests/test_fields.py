"""A sample's fields beyond the image (ImageSet.fields) travel with it: subsets, every step's batch, the epoch hook."""

import torch

from selfsup.config import TrainConfig
from selfsup.data.sources import ImageSet
from selfsup.engine.batches import batches
from selfsup.engine.epoch import Epoch


def _set(n: int = 24) -> ImageSet:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    fields = {"tag": torch.arange(n) * 10, "frames": images[:, None].expand(n, 2, 3, 4, 4).contiguous()}
    return ImageSet(images, torch.arange(n) % 3, fields=fields)


def test_subset_slices_every_field():
    s = _set()
    idx = torch.tensor([5, 0, 17])
    sub = s.subset(idx)
    assert torch.equal(sub.fields["tag"], idx * 10)
    assert torch.equal(sub.fields["frames"][:, 1], sub.images)


def test_every_batch_carries_its_own_samples_fields():
    s = _set()
    cfg = TrainConfig(method="simclr", data="x", batch_size=8, steps=6, device="cpu")
    got = list(batches(s, s.images, s.labels, cfg, 0, 6, 3, torch.device("cpu"), lambda: None, lambda e: None,
                       None, s.fields))
    assert len(got) == 6
    for b in got:
        assert torch.equal(b.fields["tag"], b.indices * 10)
        assert torch.equal(b.fields["frames"][:, 0], b.images)
    seen = torch.cat([b.indices for b in got[:3]])
    assert sorted(seen.tolist()) == list(range(24))  # one epoch: every sample once


def test_the_epoch_hook_sees_the_whole_sets_fields():
    s = _set()
    ctx = Epoch(0, s.images, torch.nn.Linear(1, 1), {}, torch.device("cpu"), 0, s.fields)
    assert torch.equal(ctx.fields["tag"], torch.arange(24) * 10)
    assert Epoch(0, s.images, torch.nn.Linear(1, 1), {}, torch.device("cpu"), 0).fields == {}


def test_texts_round_trip_as_bytes_and_are_cut_at_a_character_boundary():
    from selfsup.data.text import decode_texts, encode_texts

    texts = ["a red circle left of a blue square", "", "größer ★"]
    rows = encode_texts(texts, 16)
    assert rows.shape == (3, 16) and rows.dtype == torch.uint8
    assert decode_texts(rows) == ["a red circle lef", "", "größer ★"]
    cut = decode_texts(encode_texts(["ab★"], 4))  # ★ is 3 bytes: it does not fit after 'ab'
    assert cut == ["ab"]


def test_a_method_that_needs_fields_gets_the_test_images_fields_in_its_outputs(tmp_path, monkeypatch):
    import selfsup
    from selfsup.data.moving_objects import moving_objects
    from selfsup.methods.motion_segmentation import MotionSegmentation

    seen = []
    original = MotionSegmentation.outputs

    def spy(self, images, generator, fields=None):
        seen.append((images, fields))
        return original(self, images, generator, fields=fields)

    monkeypatch.setattr(MotionSegmentation, "outputs", spy)
    data = moving_objects(clips_per_class=30, size=16)
    cfg = selfsup.TrainConfig(method="motion-segmentation", data="moving-objects", steps=4, batch_size=64,
                              device="cpu")
    selfsup.train(cfg, tmp_path, evaluate=False, show_progress=False, data=data)
    assert seen and (tmp_path / "outputs.png").exists()
    images, fields = seen[0]
    assert torch.equal(fields["frames"], data.test.fields["frames"][: len(images)])
    assert torch.equal(fields["frames"][:, fields["frames"].shape[1] // 2], images)  # the clips of those very images


def test_data_without_a_methods_fields_is_one_line_naming_where_they_come_from(tmp_path, capsys):
    from selfsup.cli import main

    for method, source in (("clip", "photo.txt"), ("shuffle-learn", "moving-objects"),
                           ("synthetic-multitask", "--data scenes")):
        out = str(tmp_path / method)
        assert main(["train", "--method", method, "--data", "digits", "--steps", "2", "--out", out]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "lacks" in err[0] and source in err[0], err
        assert not (tmp_path / method).exists()  # refused before anything is written
