"""Using a trained encoder: embed (files round-trip, rows follow paths), export (torchvision / timm / ONNX give the
same features without selfsup; the printed preprocessing decodes as selfsup does), shards (the printed command,
decode workers), faiss search, and every bad input. Retrieval itself: tests/test_retrieval.py."""

import csv
import os
import shutil
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

import selfsup
from selfsup import TrainConfig, api
from selfsup.cli import main
from selfsup.data import load_data, stream
from selfsup.data.folder import DEFAULT_FOLDER_SIZE, load_images
from selfsup.data.ops.base import IMAGENET_MEAN, IMAGENET_STD
from selfsup.data.sources import DEFAULT_STREAM_SIZE
from selfsup.data.stream import decode_square
from selfsup.engine.build import build_method, method_from_checkpoint
from selfsup.engine.checkpoint import save_checkpoint
from selfsup.errors import UserError
from selfsup.evaluate import neighbours
from tests.helpers import class_folder, write_images
from tests.test_cli import assert_one_line_error


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny real run: SimCLR, small convnet, 3 steps on digits at 8 px."""
    return selfsup.train(TrainConfig(method="simclr", data="digits", steps=3, batch_size=64, image_size=8),
                         tmp_path_factory.mktemp("use") / "run", evaluate=False, show_progress=False)


@pytest.fixture(scope="module")
def run_dir(run):
    return run.out


def untrained_checkpoint(path, backbone, image_size):
    """A checkpoint of an untrained method with random BN statistics and affines, so that every tensor matters."""
    cfg = TrainConfig(backbone=backbone, image_size=image_size, steps=1)
    method = build_method(cfg, image_size, num_classes=0)
    for m in method.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    save_checkpoint(path, dict(config=cfg.to_dict(), step=0, image_size=image_size, num_classes=0,
                               state=method.state_dict()))
    return path


def run_ok(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured


def printed_preprocessing(stdout):
    """The preprocessing `selfsup export` prints (between the first and the second blank line)."""
    return stdout.split("\n\n")[1]


def printed_code(stdout):
    """The loading code `selfsup export` prints (between the third and the fourth blank line)."""
    return stdout.split("\n\n")[3]


def odd_images(folder, sizes=((101, 67), (67, 101), (333, 250), (64, 63), (1001, 37), (50, 80), (130, 81))):
    """Smooth colour gradients with noise, of awkward sizes: PNGs, one JPEG and one grey PNG at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, paths = np.random.default_rng(0), []
    for i, (w, h) in enumerate(sizes):
        x, y = np.linspace(0, 1, w)[None, :, None], np.linspace(0, 1, h)[:, None, None]
        a = np.clip(255 * (0.5 + 0.5 * np.sin(7 * x + 3 * y + np.arange(3))) + rng.integers(-20, 20, (h, w, 3)), 0, 255)
        im = Image.fromarray(a.astype(np.uint8))
        paths.append(folder / f"{w}x{h}.{'jpg' if i == len(sizes) - 2 else 'png'}")
        (im.convert("L") if i == len(sizes) - 1 else im).save(paths[-1])
    return paths


# --- embed -------------------------------------------------------------------------------------------------------

def test_embedding_rows_follow_the_paths_not_the_order(run_dir, tmp_path):
    backbone = method_from_checkpoint(run_dir)[0].backbone
    files = write_images(tmp_path / "a", 10, size=8)
    renamed = tmp_path / "b"
    renamed.mkdir()
    for i, f in enumerate(files):  # reversed names: sorted order is reversed too
        shutil.copy(f, renamed / f"copy{len(files) - i:03d}.png")
    feats_a, paths_a = selfsup.embed(backbone, tmp_path / "a", image_size=8)
    feats_b, paths_b = selfsup.embed(backbone, renamed, image_size=8)
    assert paths_a == [str(f) for f in files] and feats_a.shape == (10, 256)
    row_b = dict(zip(paths_b, feats_b))
    for i in range(len(files)):
        torch.testing.assert_close(row_b[str(renamed / f"copy{len(files) - i:03d}.png")], feats_a[i])

    images = load_images(tmp_path / "a", 8)
    shuffled = images.subset(torch.randperm(len(images), generator=torch.Generator().manual_seed(1)))
    feats_s, paths_s = selfsup.embed(backbone, shuffled, batch_size=3)
    assert sorted(paths_s) == paths_a and paths_s != paths_a
    torch.testing.assert_close(feats_s, feats_a[[paths_a.index(p) for p in paths_s]])


def test_embed_files_round_trip_and_unreadable_files_are_listed(run_dir, tmp_path, capsys):
    data = class_folder(tmp_path / "data", classes=2, per_class=3, size=8)
    (data / "class1" / "broken.png").write_bytes(b"not a png")
    expected, paths = selfsup.embed(method_from_checkpoint(run_dir)[0].backbone, load_images(data, 8))
    assert len(paths) == 6

    err = run_ok(capsys, "embed", "--checkpoint", run_dir, "--data", data, "--out", tmp_path / "e.pt", "--quiet").err
    assert "skipped 1 unreadable image(s)" in err and str(data / "class1" / "broken.png") in err
    saved = torch.load(tmp_path / "e.pt")
    assert saved["paths"] == paths
    torch.testing.assert_close(saved["embeddings"], expected)

    run_ok(capsys, "embed", "--checkpoint", run_dir, "--data", data, "--out", tmp_path / "out" / "e.npy", "--quiet")
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "out" / "e.npy")), expected)
    assert (tmp_path / "out" / "e.paths.txt").read_text().splitlines() == paths

    run_ok(capsys, "embed", "--checkpoint", run_dir, "--data", data, "--out", tmp_path / "e.csv", "--quiet")
    with open(tmp_path / "e.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["path", "label", "e0"] and len(rows[0]) == 2 + 256
    assert [r[0] for r in rows[1:]] == paths and [r[1] for r in rows[1:]] == ["class0"] * 3 + ["class1"] * 3
    assert torch.equal(torch.tensor([[float(v) for v in r[2:]] for r in rows[1:]]), expected)  # exact


# --- export ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["torchvision", "timm"])
@pytest.mark.parametrize("stem, image_size", [("cifar", 8), ("imagenet", 64)])
def test_export_loads_strict_without_selfsup_and_gives_the_same_features(tmp_path, capsys, fmt, stem, image_size):
    if fmt == "timm":
        pytest.importorskip("timm", reason="timm is not installed (pip install timm)")
    ckpt = untrained_checkpoint(tmp_path / "ckpt.pt", "resnet18", image_size)
    backbone = method_from_checkpoint(ckpt)[0].backbone.eval()
    assert backbone.stem == stem
    out = run_ok(capsys, "export", "--checkpoint", ckpt, "--format", fmt, "--out", tmp_path / "r18.pt").out
    code = printed_code(out)
    assert ("nn.Conv2d(3, 64, 3, 1, 1, bias=False)" in code) == (stem == "cifar")
    x = torch.randn(3, 3, image_size, image_size)
    scope = {"x": x}
    exec(code, scope)  # the printed lines, as a user would paste them: load_state_dict is strict by default
    assert type(scope["model"]).__module__.split(".")[0] == fmt
    with torch.no_grad():
        torch.testing.assert_close(scope["features"], backbone(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone_name", ["small", "resnet18"])
def test_onnx_export_runs_in_onnxruntime_with_the_same_outputs(run_dir, tmp_path, capsys, backbone_name):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install selfsup[export])")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install selfsup[export])")
    ckpt = run_dir if backbone_name == "small" else untrained_checkpoint(tmp_path / "c.pt", "resnet18", 8)
    out = run_ok(capsys, "export", "--checkpoint", ckpt, "--format", "onnx", "--out", tmp_path / "b.onnx").out
    backbone = method_from_checkpoint(ckpt)[0].backbone.eval()
    scope = {"paths": odd_images(tmp_path / "images")}  # another batch size than the export's: the axis is dynamic
    exec(printed_preprocessing(out), scope)  # the lines that make x from image files, as printed
    exec(printed_code(out), scope)
    x = torch.from_numpy(scope["x"])
    assert x.shape == (7, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(scope["features"]), backbone(x), atol=1e-4, rtol=1e-4)


def test_the_printed_preprocessing_resizes_images_of_any_size_as_selfsup_does(tmp_path, capsys):
    size = 24
    ckpt = untrained_checkpoint(tmp_path / "c.pt", "resnet18", size)
    out = run_ok(capsys, "export", "--checkpoint", ckpt, "--format", "torchvision", "--out", tmp_path / "r.pt").out
    paths = odd_images(tmp_path / "images")
    scope = {"paths": paths}
    exec(printed_preprocessing(out), scope)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    pixels = scope["x"] * std + mean
    selfsup_decoded = torch.stack([torch.from_numpy(decode_square(p, size, draft=False)) for p in paths]) / 255
    assert float((pixels - selfsup_decoded).abs().max()) <= 1 / 255
    # what the note under it says: torchvision's Resize + CenterCrop moves some of these images by a pixel
    standard = T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor()])
    resized = torch.stack([standard(Image.open(p).convert("RGB")) for p in paths]) / 255
    assert float((resized - selfsup_decoded).abs().amax(dim=(1, 2, 3)).max()) > 10 / 255
    assert f"Resize({size}) + CenterCrop({size}) is not the same" in out


def test_the_python_export_takes_a_run_a_run_folder_a_checkpoint_or_a_module(run, tmp_path):
    ckpt = untrained_checkpoint(tmp_path / "c.pt", "resnet18", 8)
    text = api.export(ckpt, "torchvision", tmp_path / "a.pt")
    assert text.startswith(f"wrote {tmp_path / 'a.pt'}") and "(B, 3, 8, 8)" in text
    module = method_from_checkpoint(ckpt)[0].encoder()
    with pytest.raises(UserError, match="^export\\(\\) of a module needs image_size"):
        api.export(module, "torchvision", tmp_path / "b.pt")
    assert "(B, 3, 8, 8)" in api.export(module, "torchvision", tmp_path / "b.pt", image_size=8)
    first, second = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    for model in (run, run.out):  # the small convnet: no torchvision equivalent, said without CLI flags
        with pytest.raises(UserError, match="no torchvision equivalent; export it as onnx") as e:
            api.export(model, "torchvision", tmp_path / "c.pt")
        assert "--" not in str(e.value)
    with pytest.raises(UserError, match="unknown export format 'keras'"):
        api.export(run, "keras", tmp_path / "c.pt")
    pytest.importorskip("onnx", reason="onnx is not installed (pip install selfsup[export])")
    assert "(B, 3, 8, 8)" in api.export(run, "onnx", tmp_path / "run.onnx")  # the run's image size


# --- retrieve ----------------------------------------------------------------------------------------------------

def test_large_indexes_use_faiss_with_the_same_answer(monkeypatch):
    pytest.importorskip("faiss", reason="faiss is optional and not installed")
    g = torch.Generator().manual_seed(0)
    index, queries = torch.randn(500, 16, generator=g), torch.randn(7, 16, generator=g)
    exact = neighbours.nearest(queries, index, 5)
    monkeypatch.setattr(neighbours, "FAISS_MIN", 100)
    sims, pos = neighbours.nearest(queries, index, 5)
    assert torch.equal(pos, exact[1])
    torch.testing.assert_close(sims, exact[0])


def test_every_run_folder_gets_a_retrieval_grid(tmp_path):
    data = class_folder(tmp_path / "data", classes=2, per_class=10, size=8)
    run = selfsup.train(TrainConfig(data=str(data), steps=2, batch_size=8, image_size=8), tmp_path / "run",
                        show_progress=False)
    assert run.data.evaluable
    assert Image.open(tmp_path / "run" / "retrieval.png").size[0] > 100


# --- shards ------------------------------------------------------------------------------------------------------

def test_the_printed_shards_command_gives_the_image_size_the_folder_would_train_at(tmp_path, capsys):
    square = class_folder(tmp_path / "square", classes=2, per_class=3, size=12)  # all 12 x 12: folders train at 12
    command = run_ok(capsys, "shards", square, tmp_path / "s").out.splitlines()[-1].split()
    assert command[:3] == ["selfsup", "train", "--data"] and command[4:] == ["--image-size", "12"]
    spec = command[3].strip("'")
    assert load_data(spec, 12).pretrain.images.shape == load_data(str(square)).pretrain.images.shape == (6, 3, 12, 12)
    assert load_data(spec).pretrain.images.shape[-1] == DEFAULT_FOLDER_SIZE == DEFAULT_STREAM_SIZE  # one default

    mixed = tmp_path / "mixed"  # mixed sizes: a folder trains at the default, as shards do, so no flag
    write_images(mixed, 2, size=12)
    write_images(mixed / "more", 2, size=20)
    assert run_ok(capsys, "shards", mixed, tmp_path / "s", "--overwrite").out.splitlines()[-1].split()[4:] == []
    assert load_data(str(mixed)).pretrain.images.shape[-1] == DEFAULT_FOLDER_SIZE


def test_decode_workers_default_to_the_cores_available_and_never_exceed_them(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)  # 3 of the machine's cores
    assert stream.available_cores() == 3
    assert [stream.decode_workers(n) for n in (None, 0, 2, 8)] == [3, 0, 2, 3]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun, 2 processes on this machine: they share the cores
    assert stream.decode_workers() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(96)))
    assert stream.decode_workers() == stream.MAX_DEFAULT_WORKERS and stream.decode_workers(40) == 40


def test_more_workers_than_cores_start_no_more_than_the_cores(tmp_path, monkeypatch):
    files = write_images(tmp_path / "f", 4, size=8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)  # torch's own check reads it too
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(stream.FileImages(files, 8).batches(torch.arange(4), 0, 2, workers=8, pin=False))
    assert [len(x) for _, x, _ in batches] == [2, 2]
    assert not [w for w in caught if "worker processes" in str(w.message)]


# --- bad input ---------------------------------------------------------------------------------------------------

def test_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, capsys):
    flat = tmp_path / "flat"
    write_images(flat, 4, size=8)
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    ck = ["--checkpoint", str(run_dir)]
    retrieve_args = ["retrieve", *ck, "--data", str(flat), "--query", str(flat)]
    for args, fragment in [
        (["export", *ck, "--format", "timm", "--out", str(tmp_path / "b.pt")], "has no timm equivalent"),
        (["export", *ck, "--format", "torchvision", "--out", str(tmp_path / "b.pt")], "export it as onnx"),
        (["export", *ck, "--format", "keras", "--out", str(tmp_path / "b.pt")], "invalid choice: 'keras'"),
        (["retrieve", *ck, "--data", str(flat), "--query", str(tmp_path / "empty"), "--out", str(tmp_path / "g.png")],
         "no images found"),
        ([*retrieve_args, "--k", "0", "--out", str(tmp_path / "g.png")], "--k: must be a positive integer (got 0)"),
        ([*retrieve_args, "--out", "/proc/forbidden/x.png"], "cannot write '/proc/forbidden/x.png'"),
        ([*retrieve_args, "--out", str(tmp_path / "a_file" / "g.png")], "cannot write"),
        ([*retrieve_args, "--out", str(tmp_path / "g.gif")], "cannot tell the output type"),
        (["embed", *ck, "--data", str(flat), "--out", str(tmp_path / "a_file" / "e.npy")], "cannot write"),
        (["embed", *ck, "--data", str(flat), "--out", str(tmp_path / "e.parquet")], "end it in .csv, .npy, .pt"),
        (["embed", *ck, "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "e.pt")], "does not exist"),
        (["embed", *ck, "--data", str(flat), "--out", str(tmp_path / "e.pt"), "--batch-size", "-1"],
         "must be a positive integer"),
        (["embed", "--checkpoint", str(tmp_path / "a_file"), "--data", str(flat), "--out", str(tmp_path / "e.pt")],
         "is not a selfsup checkpoint"),
    ]:
        assert_one_line_error(capsys, args, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "empty", "flat"]  # nothing written


def test_onnx_without_the_package_says_what_to_install(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    assert_one_line_error(capsys, ["export", "--checkpoint", str(run_dir), "--format", "onnx", "--out",
                                   str(tmp_path / "b.onnx")], 'pip install "selfsup[export]"')
    assert not (tmp_path / "b.onnx").exists()
