"""Inputs that used to crash or silently mislead: high-bit-depth images, file names that are not UTF-8,
decompression bombs, labeled folders too small to test on, a broken decode cache, oversized or mislabeled tar
members, and shards written over old ones. Each is skipped, reported or refused on one line."""

import io
import json
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.cli import main
from selfsup.data import folder as folder_mod
from selfsup.data import load_data
from selfsup.data.folder import _images_in, load_images
from selfsup.data.stream import FileImages, decode_square, shard_spec, write_shards
from selfsup.errors import UserError
from selfsup.use.embed import save_embeddings
from tests.helpers import class_folder, write_images


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))


def _png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG file written from its definition (W3C PNG spec): signature, IHDR, one zlib IDAT, IEND.
    ``rows``: the raw scanlines, big-endian samples, without the filter bytes (filter 0 is added)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    stride = len(rows) // height
    raw = b"".join(b"\x00" + rows[r * stride : (r + 1) * stride] for r in range(height))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _decoded_in_memory(path: Path, size: int) -> np.ndarray:
    """The image as a folder load decodes it, (H, W, 3)."""
    return load_images(path, size).images[0].permute(1, 2, 0).numpy()


# ------------------------------------------------------------------------------------ high bit depth


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64).round().astype(np.uint16).reshape(8, 8)
    Image.fromarray(values).save(tmp_path / "grey16.png")  # Pillow writes mode I;16 as a 16-bit grey PNG
    expected = np.rint(values / 257).astype(np.uint8)
    streamed = decode_square(tmp_path / "grey16.png", 8).transpose(1, 2, 0)
    for got in (_decoded_in_memory(tmp_path / "grey16.png", 8), streamed):
        assert np.array_equal(got, np.repeat(expected[..., None], 3, axis=2))
    assert (expected == 255).mean() < 0.05  # the report: 93% of the pixels were 255


def test_16_bit_rgb_png_is_scaled(tmp_path):
    values = np.random.default_rng(0).integers(0, 65536, (6, 8, 3)).astype(">u2")
    (tmp_path / "rgb16.png").write_bytes(_png(8, 6, 16, 2, values.tobytes()))
    got = _decoded_in_memory(tmp_path / "rgb16.png", 6)  # the centre 6 x 6 of the 8 x 6 image
    # Pillow reads 16-bit RGB PNGs as their high byte: within one level of value / 257
    assert np.abs(got.astype(int) - np.rint(values[:, 1:7] / 257)).max() <= 1


@pytest.mark.parametrize("mode", ["I", "F", "LA", "P", "CMYK"])
def test_other_modes_become_8_bit_rgb_by_their_meaning(tmp_path, mode):
    rng = np.random.default_rng(1)
    if mode == "I":  # 16-bit PGM: Pillow opens it as 32-bit integers 0..65535
        values = rng.integers(0, 65536, (5, 5)).astype(">u2")
        (tmp_path / "x.pgm").write_bytes(b"P5 5 5 65535\n" + values.tobytes())
        path, grey = tmp_path / "x.pgm", np.rint(values / 257)
    elif mode == "F":  # 32-bit float TIFF in [0, 1]
        values = rng.random((5, 5), dtype=np.float32)
        Image.fromarray(values).save(tmp_path / "x.tif")
        path, grey = tmp_path / "x.tif", np.rint(values.astype(np.float64) * 255)
    else:
        grey = rng.integers(0, 256, (5, 5)).astype(np.uint8)
        if mode == "LA":
            im = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(255 - grey)])
        elif mode == "P":
            im = Image.fromarray(grey).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
            grey = np.asarray(im.convert("L"))
        else:  # CMYK with only K: grey = 255 - K
            k = Image.fromarray(255 - grey)
            zero = Image.new("L", (5, 5))
            im = Image.merge("CMYK", [zero, zero, zero, k])
        path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
        im.save(path)
    with Image.open(path) as im:
        assert im.mode == mode
    got = _decoded_in_memory(path, 5)
    assert np.abs(got.astype(int) - grey[..., None]).max() == 0


# ----------------------------------------------------------------------------------- non-UTF-8 names


def _bad_name(folder: Path, name: bytes) -> Path:
    """``folder / name`` for a name that is not UTF-8 (Python holds it with surrogate escapes)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


def test_file_names_that_are_not_utf8_decode_cache_and_print(tmp_path, capsys, monkeypatch):
    root = _bad_name(tmp_path, b"d\xe9cor")  # a Latin-1 folder name, with a Latin-1 file and a broken file in it
    write_images(root, 3)
    bad = _bad_name(root, b"caf\xe9.png")
    (root / "img000.png").rename(bad)
    broken = _bad_name(root, b"br\xffken.png")
    broken.write_bytes(b"not an image")
    monkeypatch.setattr(folder_mod, "PROGRESS_MIN", 0)  # show the progress bar (its label is the folder's name)
    first = load_data(str(root), 12)
    err = capsys.readouterr().err
    assert "decoding d\\xe9cor" in err and "br\\xffken.png" in err and err.count("skipped 1 unreadable") == 1
    assert len(first.pretrain) == 3 and str(bad) in first.pretrain.paths

    def no_decoding(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(folder_mod, "_decode", lambda p, s: "unreadable" if p == broken else no_decoding())
    assert torch.equal(load_data(str(root), 12).pretrain.images, first.pretrain.images)


def test_class_names_that_are_not_utf8_are_shown_with_escapes_and_match_between_splits(tmp_path):
    for split, n in (("train", 6), ("val", 3)):
        class_folder(tmp_path / "r" / split, classes=2, per_class=n)
        (tmp_path / "r" / split / "class1").rename(_bad_name(tmp_path / "r" / split, b"cl\xe9ss1"))
    data = load_data(str(tmp_path / "r"))
    assert data.train.classes == data.test.classes == ["class0", "cl\\xe9ss1"]  # plots and CSVs can write them
    assert data.test.labels.tolist() == [0] * 3 + [1] * 3 and data.evaluable


def test_errors_about_non_utf8_names_are_one_printable_line(tmp_path, capsys):
    empty = _bad_name(tmp_path, b"\xff")
    empty.mkdir()
    assert main(["train", "--data", str(empty), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no images found in" in err and "\\xff" in err


def test_embeddings_of_non_utf8_names_are_written_with_the_names_bytes(tmp_path):
    name = _bad_name(tmp_path, b"caf\xe9.png")
    feats = torch.ones(1, 2)
    for out in (tmp_path / "e.csv", tmp_path / "e.npy"):
        save_embeddings(feats, [str(name)], out)
    assert os.fsencode(name) + b"\n" == (tmp_path / "e.paths.txt").read_bytes()
    assert os.fsencode(name) in (tmp_path / "e.csv").read_bytes()


# ---------------------------------------------------------------------------------- decompression bombs


def _bomb(path: Path, side: int = 14_000) -> None:
    """A tiny PNG whose header claims ``side`` x ``side`` pixels (196 megapixels: over twice Pillow's limit)."""
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_a_decompression_bomb_in_a_folder_is_skipped_counted_and_reported(tmp_path, capsys):
    root = class_folder(tmp_path / "c", classes=2, per_class=6)
    _bomb(root / "class1" / "img002.png")
    data = load_data(str(root))  # no --image-size: the common size is read from the headers first
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(data.pretrain) + len(data.test) == 11 and data.skipped == [str(root / "class1" / "img002.png")]
    assert len(lines) == 1 and "skipped 1 unreadable image(s)" in lines[0] and "MAX_IMAGE_PIXELS" in lines[0]


def test_images_over_pillows_warning_limit_are_skipped_too(tmp_path, capsys, monkeypatch):
    root = tmp_path / "f"
    write_images(root, 3, size=12)
    write_images(root / "big", 1, size=30)[0].rename(root / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 30 x 30 = 900: over it, under twice it (a warning)
    with pytest.warns(Image.DecompressionBombWarning):
        data = load_data(str(root), 12)
    assert len(data.pretrain) == 3 and data.skipped == [str(root / "big.png")]


def test_a_decompression_bomb_in_a_stream_is_left_blank_and_reported(tmp_path, capfd):
    files = write_images(tmp_path / "s", 3, size=12)
    _bomb(files[1])
    batch = FileImages(files, 8)[torch.arange(3)]
    assert batch[1].sum() == 0 and batch[0].sum() > 0 and batch[2].sum() > 0
    shards = load_data(shard_spec(write_shards(files, None, tmp_path / "shards", seed=None)), 8).pretrain.images
    blanks = [int(i) for idx, x, _ in shards.batches(0, 0, 1, 0, 1, 0, False) for i in idx if x.sum() == 0]
    assert blanks == [1]
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("unreadable image" in e and "MAX_IMAGE_PIXELS" in e for e in err)


# ------------------------------------------------------------------------ labeled folders too small to test


def test_one_image_per_class_pretrains_on_all_without_evaluation(tmp_path, capsys):
    root = class_folder(tmp_path / "c", classes=12, per_class=1)
    data = load_data(str(root))
    assert len(data.pretrain) == 12 and not data.evaluable and data.test is None
    assert "no class in" in capsys.readouterr().err
    run = tmp_path / "run"
    code = main(["train", "--data", str(root), "--steps", "1", "--batch-size", "4", "--image-size", "8", "--quiet",
                 "--out", str(run)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err.count("note: no class in") == 1 and "no evaluation" in captured.out
    assert "knn_top1" not in json.loads((run / "metrics.json").read_text())


# ---------------------------------------------------------------------------------------- decode cache


def _entry(tmp_path: Path) -> Path:
    (entry,) = (tmp_path / "cache").glob("folder-*.npz")
    return entry


def test_a_corrupt_or_stale_cache_entry_is_decoded_again(tmp_path):
    root = class_folder(tmp_path / "c", classes=2, per_class=3)
    first = load_data(str(root)).pretrain.images
    entry = _entry(tmp_path)
    entry.write_bytes(entry.read_bytes()[:200])  # truncated, as by a full disk
    assert torch.equal(load_data(str(root)).pretrain.images, first)
    for images, kept in [(np.zeros((2, 3, 12, 12), np.uint8), [0, 9]),  # stale entries that do not fit the files
                         (np.zeros((6, 3, 8, 8), np.uint8), range(6)), (np.zeros((6, 3, 12, 12)), range(6))]:
        np.savez(entry, images=images, kept=np.asarray(kept))
        assert torch.equal(load_data(str(root)).pretrain.images, first)
    with np.load(_entry(tmp_path)) as z:  # rewritten whole
        assert np.array_equal(z["images"], first.numpy())


def test_a_cache_that_cannot_be_written_is_skipped_with_one_warning(tmp_path, monkeypatch, capsys):
    root = class_folder(tmp_path / "c", classes=2, per_class=3)
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "file" / "cache"))
    for _ in range(2):
        assert len(load_data(str(root)).pretrain) == 6
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot write the decode cache" in err[0]


def test_a_changed_image_with_the_same_size_and_mtime_is_decoded_again(tmp_path):
    root = tmp_path / "f"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"{i}.bmp")  # uncompressed
    first = load_data(str(root), 8).pretrain.images
    target = root / "1.bmp"
    st = target.stat()
    new = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(new).save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    second = load_data(str(root), 8).pretrain.images
    assert torch.equal(second[1], torch.from_numpy(new).permute(2, 0, 1)) and torch.equal(second[0], first[0])


def test_a_write_killed_midway_leaves_no_cache_entry(tmp_path, monkeypatch):
    root = class_folder(tmp_path / "c", classes=2, per_class=3)

    def killed(path, **arrays):
        Path(path).write_bytes(b"PK half an entry")
        raise KeyboardInterrupt

    monkeypatch.setattr(folder_mod.np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        load_data(str(root))
    assert not list((tmp_path / "cache").iterdir())
    monkeypatch.undo()
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    assert len(load_data(str(root)).pretrain) == 6 and _entry(tmp_path).stat().st_size > 1000


# ------------------------------------------------------------------------------------------- tar shards


def _tar(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return f"wds:{path}"


def test_a_shard_member_over_the_limit_is_skipped_unread(tmp_path, monkeypatch, capsys):
    small = [p.read_bytes() for p in write_images(tmp_path / "small", 3, size=8)]
    big = write_images(tmp_path / "big", 1, size=64)[0].read_bytes()
    assert max(map(len, small)) < 2048 < len(big)
    spec = _tar(tmp_path / "s.tar", {"a.png": small[0], "a.cls": b"0", "b.png": big, "b.cls": b"1",
                                     "c.png": small[1], "c.cls": b"1", "d.png": small[2], "d.cls": b"0"})
    read = []
    extract = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: read.append(m.name) or extract(self, m))
    monkeypatch.setenv("SELFSUP_MAX_MEMBER_MB", str(2048 / 2**20))
    data = load_data(spec, 8)
    images = data.pretrain.images
    assert len(images) == 3 and data.pretrain.labels.tolist() == [0, 1, 0] and data.skipped == [f"b in {spec[4:]}"]
    got = [x for _, x, _ in images.batches(0, 0, 1, 0, 3, 0, False)][0]
    assert sorted(x.sum().item() for x in got) == sorted(decode_square(s, 8).sum().item() for s in small)
    assert "b.png" not in read and "a.png" in read  # the big member was never read
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 1 image(s) larger than" in err[0]


@pytest.mark.parametrize("label", [b"cat", b"-1", b"2.5", b""])
def test_a_label_that_is_not_an_integer_is_one_line_naming_shard_and_sample(tmp_path, capsys, label):
    png = write_images(tmp_path / "i", 1, size=8)[0].read_bytes()
    spec = _tar(tmp_path / "s.tar", {"k0.png": png, "k0.cls": b"3\n", "k1.png": png, "k1.cls": label})
    with pytest.raises(UserError, match=r"shard '.*s\.tar', sample 'k1'.*non-negative integer"):
        load_data(spec, 8)
    assert main(["train", "--data", spec, "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sample 'k1'" in err and not (tmp_path / "run").exists()


def test_shards_refuse_a_folder_that_already_holds_shards(tmp_path, capsys):
    files = _images_in(class_folder(tmp_path / "c", classes=2, per_class=4, size=8))
    out = tmp_path / "out"
    assert main(["shards", str(tmp_path / "c"), str(out), "--per-shard", "3"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) == 3
    capsys.readouterr()
    assert main(["shards", str(tmp_path / "c"), str(out), "--per-shard", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds 3 shard(s)" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    assert [p.name for p in write_shards(files, None, out, per_shard=8, overwrite=True)] == ["shard-000000.tar"]
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar"]
