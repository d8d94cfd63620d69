"""Retrieval: centred similarities (unrelated ~ 0, near-duplicates ~ 1), the query is not its own neighbour, a
folder's embeddings are cached by content, an embeddings file stands in for its folder, non-UTF-8 names, and
the Python entry point selfsup.api.retrieve."""

import csv
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup import api
from selfsup.data.sources import ImageSet
from selfsup.engine.build import method_from_checkpoint
from selfsup.errors import UserError
from selfsup.evaluate import neighbours
from selfsup.use import retrieve as retrieve_mod
from selfsup.use.embed import embed
from tests.helpers import write_images
from tests.test_cli import assert_one_line_error
from tests.test_use import run_ok, untrained_checkpoint

SIZE = 16


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An untrained small convnet (random BN statistics): features after a ReLU, so non-negative."""
    return untrained_checkpoint(tmp_path_factory.mktemp("retrieval") / "ckpt.pt", "small", SIZE)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))


def encoder(ckpt):
    return method_from_checkpoint(ckpt)[0].encoder()


def near_copy(src, dst, seed=0):
    """``src`` with every pixel moved by at most 3 levels: a near-duplicate, not the same pixels."""
    a = np.asarray(Image.open(src)).astype(int)
    a += np.random.default_rng(seed).integers(-3, 4, a.shape)
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(dst)


def index_folder(root):
    """12 random images, an exact copy of img003 and a near-duplicate of it."""
    files = write_images(root, 12, size=SIZE)
    shutil.copy(files[3], root / "img003_copy.png")
    near_copy(files[3], root / "img003_near.png")
    return files


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_centred_similarities_put_unrelated_images_near_0_and_near_duplicates_near_1(ckpt):
    g = torch.Generator().manual_seed(0)
    index = torch.randint(0, 256, (40, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    unrelated = torch.randint(0, 256, (5, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    near = (index[:5].int() + torch.randint(-3, 4, (5, 3, SIZE, SIZE), generator=g)).clamp(0, 255).byte()
    enc = encoder(ckpt)
    x, u, d = (embed(enc, ImageSet(images), SIZE)[0] for images in (index, unrelated, near))
    assert float((F.normalize(u, dim=1) @ F.normalize(x, dim=1).T).min()) > 0.9  # the plain cosine: all alike

    sims, _ = neighbours.nearest(u, x, len(x))  # every index image, against unrelated queries
    mean = x.double().mean(0)
    reference = torch.tensor([[float(F.cosine_similarity(q.double() - mean, r.double() - mean, dim=0)) for r in x]
                              for q in u])  # one pair at a time, from the definition
    torch.testing.assert_close(sims, reference.sort(dim=1, descending=True).values.float(), atol=1e-5, rtol=0)
    assert abs(float(sims.mean())) < 0.05 and float(sims.abs().mean()) < 0.2
    sims, pos = neighbours.nearest(d, x, 2)
    assert pos[:, 0].tolist() == list(range(5)) and float(sims[:, 0].min()) > 0.95 and float(sims[:, 1].max()) < 0.6


def test_the_query_is_not_its_own_neighbour_nor_a_copy_with_the_same_pixels(ckpt, tmp_path, capsys):
    index = tmp_path / "index"
    files = index_folder(index)
    grid = tmp_path / "grid.png"
    run_ok(capsys, "retrieve", "--checkpoint", ckpt, "--data", index, "--query", files[3], "--k", "3",
           "--out", grid, "--quiet")
    rows = read_csv(tmp_path / "grid.csv")
    assert list(rows[0]) == ["query", "rank", "neighbour", "centred_cosine"]
    assert [r["neighbour"] for r in rows][0] == str(index / "img003_near.png")
    assert not {str(files[3]), str(index / "img003_copy.png")} & {r["neighbour"] for r in rows}
    sims = [float(r["centred_cosine"]) for r in rows]
    assert sims[0] > 0.95 and sims[1] < 0.6 and sims == sorted(sims, reverse=True)
    assert Image.open(grid).size[0] > 100

    run_ok(capsys, "retrieve", "--checkpoint", ckpt, "--data", index, "--query", files[3], "--k", "3",
           "--out", grid, "--quiet", "--include-self")
    rows = read_csv(tmp_path / "grid.csv")
    assert [r["neighbour"] for r in rows] == [str(files[3]), str(index / "img003_copy.png"),
                                              str(index / "img003_near.png")]
    assert [float(r["centred_cosine"]) for r in rows[:2]] == pytest.approx([1, 1], abs=1e-5)


def test_every_image_of_an_index_searched_against_itself_finds_another(ckpt, tmp_path):
    files = index_folder(tmp_path / "index")
    nb = retrieve_mod.retrieve(encoder(ckpt), tmp_path / "index", tmp_path / "index", k=2)
    assert nb.positions.shape == (14, 2)
    assert not (nb.positions == torch.arange(14)[:, None]).any()
    paths = nb.index.paths
    copy, near, original = (paths.index(str(p)) for p in (tmp_path / "index" / "img003_copy.png",
                                                         tmp_path / "index" / "img003_near.png", files[3]))
    for q in (copy, original):  # the two with the same pixels skip each other: the near copy comes first
        assert int(nb.positions[q, 0]) == near
    assert int(nb.positions[near, 0]) == original  # the copy ties with it; ties go to the lower position
    assert len(retrieve_mod.retrieve(encoder(ckpt), tmp_path / "index", files[0], k=100).positions[0]) == 13
    with pytest.raises(UserError, match="no image other than the query itself"):
        retrieve_mod.retrieve(encoder(ckpt), files[0], files[0])


def test_a_second_query_against_a_folder_does_not_embed_it_again(ckpt, tmp_path, monkeypatch):
    index = tmp_path / "index"
    index_folder(index)
    embedded = []

    def spy(backbone, images, *args, **kwargs):
        embedded.append(len(images))
        return embed(backbone, images, *args, **kwargs)

    monkeypatch.setattr(retrieve_mod, "embed", spy)
    enc = encoder(ckpt)
    first = retrieve_mod.retrieve(enc, index, index / "img005.png", k=4)
    second = retrieve_mod.retrieve(enc, index, index / "img007.png", k=4)
    again = retrieve_mod.retrieve(enc, index, index / "img005.png", k=4)
    assert embedded == [14, 1, 1, 1]  # the index once, then each query alone
    assert torch.equal(again.positions, first.positions) and torch.equal(again.similarity, first.similarity)
    assert not torch.equal(second.positions, first.positions)

    near_copy(index / "img000.png", index / "img000.png", seed=1)  # one image changed: the cache no longer fits
    retrieve_mod.retrieve(enc, index, index / "img005.png", k=4)
    with torch.no_grad():
        next(enc.parameters()).mul_(0.5)  # other weights: the same
    retrieve_mod.retrieve(enc, index, index / "img005.png", k=4)
    retrieve_mod.retrieve(enc, index, index / "img005.png", k=4, cache=False)
    assert embedded[4:] == [14, 1, 14, 1, 14, 1]


@pytest.mark.parametrize("suffix", [".pt", ".npy", ".csv"])
def test_an_embeddings_file_gives_the_same_neighbours_as_its_folder_without_embedding_it(ckpt, tmp_path, capsys,
                                                                                         monkeypatch, suffix):
    index = tmp_path / "index"
    for c in range(2):  # class folders: the .csv keeps the labels, and the picture colours them
        write_images(index / f"class{c}", 6, size=SIZE, seed=c, color=c)
    query = tmp_path / "query"
    write_images(query, 3, size=SIZE, seed=7)
    emb = tmp_path / f"e{suffix}"
    run_ok(capsys, "embed", "--checkpoint", ckpt, "--data", index, "--out", emb, "--quiet")
    common = ["retrieve", "--checkpoint", ckpt, "--query", query, "--k", "4", "--quiet"]
    run_ok(capsys, *common, "--data", index, "--out", tmp_path / "folder.png")
    embedded = []
    monkeypatch.setattr(retrieve_mod, "embed", lambda b, images, *a, **kw: embedded.append(len(images)) or
                        embed(b, images, *a, **kw))
    run_ok(capsys, *common, "--data", emb, "--out", tmp_path / "file.png")
    assert embedded == [3]  # the queries alone
    by_folder, by_file = read_csv(tmp_path / "folder.csv"), read_csv(tmp_path / "file.csv")
    assert [(r["query"], r["neighbour"]) for r in by_file] == [(r["query"], r["neighbour"]) for r in by_folder]
    assert [float(r["centred_cosine"]) for r in by_file] == pytest.approx(
        [float(r["centred_cosine"]) for r in by_folder], abs=1e-5)
    assert Image.open(tmp_path / "file.png").size == Image.open(tmp_path / "folder.png").size


def test_an_embeddings_file_of_another_encoder_or_no_embeddings_is_one_line(ckpt, tmp_path, capsys):
    write_images(tmp_path / "index", 4, size=SIZE)
    torch.save({"embeddings": torch.zeros(4, 7), "paths": [str(p) for p in sorted((tmp_path / "index").iterdir())]},
               tmp_path / "other.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "weights.pt")
    (tmp_path / "bad.csv").write_text("path,e0\na.png,x\n")
    common = ["retrieve", "--checkpoint", str(ckpt), "--query", str(tmp_path / "index" / "img000.png"),
              "--out", str(tmp_path / "g.png"), "--quiet"]
    for data, fragment in [("other.pt", "embeddings of 7 values and the encoder gives 256"),
                           ("weights.pt", "is not an embeddings file written by selfsup embed"),
                           ("bad.csv", "is not an embeddings file written by selfsup embed")]:
        assert_one_line_error(capsys, [*common, "--data", str(tmp_path / data)], fragment)


def _bad_name(folder, name: bytes):
    return type(folder)(os.fsdecode(os.fsencode(folder) + b"/" + name))


def test_folders_and_files_named_in_other_encodings_are_retrieved_and_written_as_their_bytes(ckpt, tmp_path, capsys):
    root = _bad_name(tmp_path, b"d\xe9cor")
    write_images(_bad_name(root, b"cl\xe9ss"), 4, size=SIZE)
    write_images(root / "plain", 4, size=SIZE, seed=1)
    query = _bad_name(root / "plain", b"caf\xe9.png")
    (root / "plain" / "img000.png").rename(query)
    run_ok(capsys, "retrieve", "--checkpoint", ckpt, "--data", root, "--query", query, "--k", "3",
           "--out", tmp_path / "g.png", "--quiet")
    table = (tmp_path / "g.csv").read_bytes()
    assert os.fsencode(query) in table and b"cl\xe9ss" in table and Image.open(tmp_path / "g.png").size[0] > 100


def test_the_python_entry_point_takes_a_checkpoint_and_writes_picture_and_table(ckpt, tmp_path):
    files = index_folder(tmp_path / "index")
    nb = api.retrieve(ckpt, tmp_path / "index", files[3], k=2, out=tmp_path / "out" / "g.svg", device="cpu")
    assert nb.index.paths[int(nb.positions[0, 0])] == str(tmp_path / "index" / "img003_near.png")
    assert (tmp_path / "out" / "g.svg").stat().st_size > 0
    assert [r["rank"] for r in read_csv(tmp_path / "out" / "g.csv")] == ["1", "2"]
    module = encoder(ckpt)  # a module: the images' own size; the same neighbours
    assert torch.equal(api.retrieve(module, tmp_path / "index", files[3], k=2, device=None).positions, nb.positions)
    with pytest.raises(UserError) as e:
        api.retrieve(module, tmp_path / "e.pt", files[3])
    assert "e.pt" in str(e.value)
    torch.save({"embeddings": torch.zeros(1, 256), "paths": ["x.png"]}, tmp_path / "e.pt")
    with pytest.raises(UserError, match="pass image_size$"):
        api.retrieve(module, tmp_path / "e.pt", files[3])
    with pytest.raises(UserError, match=r"^k must be a positive integer \(got 0\)$"):
        api.retrieve(module, tmp_path / "index", files[3], k=0)
    with pytest.raises(UserError, match="model must be a Run, a run folder or checkpoint.pt, or an nn.Module"):
        api.retrieve(3, tmp_path / "index", files[3])
