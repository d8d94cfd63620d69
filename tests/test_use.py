"""Using a trained encoder: embed (files round-trip, rows follow paths), export (torchvision / timm / ONNX give the
same features without selfsup), retrieve (an image finds itself, then its duplicate), and every bad input."""

import csv
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import selfsup
from selfsup import TrainConfig
from selfsup.cli import main
from selfsup.data.folder import load_images
from selfsup.engine.build import build_method, method_from_checkpoint
from selfsup.engine.checkpoint import save_checkpoint
from selfsup.evaluate import neighbours
from selfsup.use import retrieve
from tests.helpers import class_folder, write_images
from tests.test_cli import assert_one_line_error


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny real run: SimCLR, small convnet, 3 steps on digits at 8 px."""
    out = tmp_path_factory.mktemp("use") / "run"
    selfsup.train(TrainConfig(method="simclr", data="digits", steps=3, batch_size=64, image_size=8), out,
                  evaluate=False, show_progress=False)
    return out


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
    save_checkpoint(path, dict(config=cfg.to_dict(), image_size=image_size, num_classes=0, state=method.state_dict()))
    return path


def run_ok(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured


def printed_code(stdout):
    """The loading code `selfsup export` prints (between the first and the second blank line)."""
    return stdout.split("\n\n")[1]


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
    x = torch.randn(5, 3, 8, 8)  # another batch size than the export's: the batch axis is dynamic
    scope = {"x": x.numpy()}
    exec(printed_code(out), scope)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(scope["features"]), backbone(x), atol=1e-4, rtol=1e-4)


# --- retrieve ----------------------------------------------------------------------------------------------------

def test_an_image_finds_itself_first_and_its_duplicate_second(run_dir, tmp_path, capsys):
    index = tmp_path / "index"
    files = write_images(index, 12, size=8)
    shutil.copy(files[3], index / "img003_copy.png")
    grid = tmp_path / "grid.png"
    run_ok(capsys, "retrieve", "--checkpoint", run_dir, "--data", index, "--query", files[3], "--k", "3",
           "--out", grid, "--quiet")
    assert Image.open(grid).size[0] > 100
    with open(tmp_path / "grid.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["rank"] for r in rows] == ["1", "2", "3"] and {r["query"] for r in rows} == {str(files[3])}
    assert [r["neighbour"] for r in rows[:2]] == [str(files[3]), str(index / "img003_copy.png")]
    sims = [float(r["similarity"]) for r in rows]
    assert sims[:2] == pytest.approx([1, 1], abs=1e-5) and sims[2] < sims[1]

    nb = retrieve.retrieve(method_from_checkpoint(run_dir)[0].backbone, index, index, k=2)
    expected = list(range(13))
    expected[4] = 3  # img003_copy.png ties with img003.png, and ties go to the lower position
    assert nb.positions[:, 0].tolist() == expected  # every other image is its own nearest neighbour


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
        (["export", *ck, "--format", "torchvision", "--out", str(tmp_path / "b.pt")], "use --format onnx"),
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
