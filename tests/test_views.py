"""``selfsup views``: every method draws what its network sees and must predict; the panels' layout helpers
against per-image references; the picture on disk and the command's one-line errors."""

import pytest
import torch
from PIL import Image

import selfsup
from selfsup.cli import main
from selfsup.data import load_data
from selfsup.methods import METHODS
from selfsup.methods.panels import mosaic, stretch
from selfsup.use.views import method_views, save_views

DIGITS = load_data("digits")
#: settings that keep a method's views quick on digits (methods not listed use their defaults)
SETTINGS = {"deepcluster": dict(method_args=dict(num_clusters=20)),
            "ssgan": dict(backbone_args=dict(width=0.25), method_args=dict(generator_width=0.25))}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """BoWNet's teacher: a RotNet run of 2 steps at 16 px."""
    out = tmp_path_factory.mktemp("rotnet")
    cfg = selfsup.TrainConfig(method="rotnet", data="digits", steps=2, batch_size=32, image_size=16)
    selfsup.train(cfg, out, evaluate=False, show_progress=False, data=DIGITS)
    return out


def _data_for(name: str):
    """Digits, or a small set with the fields the method trains on (captions, clips, scene maps)."""
    needs = set(METHODS[name].needs_fields)
    if "text" in needs:
        from tests.captioned import captioned_digits

        return captioned_digits()
    if "frames" in needs:
        from selfsup.data.moving_objects import moving_objects

        return moving_objects(clips_per_class=4, size=16)
    if needs:
        from selfsup.data.scenes import scenes

        return scenes(train=32, test=8, size=16)
    return DIGITS


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_shows_its_inputs_and_targets_for_the_shown_images(name, request):
    settings = SETTINGS.get(name, {})
    if name == "bownet":
        settings = dict(method_args=dict(teacher=str(request.getfixturevalue("teacher")), num_words=16, locations=2))
    cfg = selfsup.TrainConfig(method=name, data="digits", image_size=16, **settings)
    panels, _ = method_views(cfg, count=4, data=_data_for(name))
    assert len(panels) >= 2 and panels[0].captions is not None  # the originals with their labels, then the method's
    for p in panels:
        assert p.title and p.images.dim() == 4 and len(p.images) == 4 and p.images.shape[1] in (1, 3), p.title
        assert bool(torch.isfinite(p.images).all()) and p.images.min() >= 0 and p.images.max() <= 1, p.title
        assert p.captions is None or len(p.captions) == 4, p.title


def test_the_views_of_a_seed_are_the_views_of_the_first_training_batch():
    cfg = selfsup.TrainConfig(method="rotnet", data="digits", image_size=16)
    a, _ = method_views(cfg, count=3, data=DIGITS)
    b, _ = method_views(cfg, count=3, data=DIGITS)
    c, _ = method_views(selfsup.TrainConfig(method="rotnet", data="digits", image_size=16, seed=1), count=3,
                        data=DIGITS)
    assert torch.equal(a[1].images, b[1].images) and not torch.equal(a[1].images, c[1].images)


def test_rotnet_rows_are_the_rotations_of_the_first_row_with_their_classes():
    panels, _ = method_views(selfsup.TrainConfig(method="rotnet", data="digits", image_size=16), 4, DIGITS)
    upright = panels[1].images
    for k, p in enumerate(panels[1:5]):
        assert torch.equal(p.images, torch.rot90(upright, k, dims=(2, 3)))
        assert list(p.captions) == [f"class {k}"] * 4


def test_jigsaw_shows_the_shuffled_tiles_and_the_puzzle_solved_by_its_permutation():
    cfg = selfsup.TrainConfig(method="jigsaw", data="digits", image_size=24, method_args=dict(permutations=10))
    panels, _ = method_views(cfg, count=4, data=DIGITS)
    shuffled, solved = panels[1], panels[2]
    from selfsup.data.permutations import max_hamming_permutations

    perms = max_hamming_permutations(10, 9, 0)
    side = (shuffled.images.shape[-1] - 2) // 3  # 3 tiles and 2 gaps of one pixel per row

    def tile(picture, b, i):
        r, c = divmod(i, 3)
        return picture[b, :, r * (side + 1): r * (side + 1) + side, c * (side + 1): c * (side + 1) + side]

    for b, caption in enumerate(shuffled.captions):
        p = perms[int(caption.split()[-1])]
        for slot in range(9):  # slot i shows cell p[i]
            assert torch.equal(tile(shuffled.images, b, slot), tile(solved.images, b, int(p[slot])))


def test_mosaic_places_every_tile_at_its_row_and_column_with_gaps():
    tiles = torch.rand(2, 5, 3, 4, 6)
    out = mosaic(tiles, columns=3, gap=2, fill=0.5)
    assert out.shape == (2, 3, 2 * 4 + 2, 3 * 6 + 2 * 2)
    expected = torch.full_like(out, 0.5)
    for b in range(2):
        for i in range(5):
            r, c = divmod(i, 3)
            expected[b, :, r * 6: r * 6 + 4, c * 8: c * 8 + 6] = tiles[b, i]
    assert torch.equal(out, expected)


def test_stretch_maps_each_image_onto_zero_to_one_by_its_own_range():
    x = torch.randn(3, 2, 5, 5) * torch.tensor([1.0, 10.0, 0.1]).view(3, 1, 1, 1)
    out = stretch(x)
    for b in range(3):
        torch.testing.assert_close(out[b], (x[b] - x[b].min()) / (x[b].max() - x[b].min()))
    assert torch.equal(stretch(torch.ones(1, 1, 2, 2)), torch.zeros(1, 1, 2, 2))  # constant: no NaN


def test_the_picture_has_a_row_per_panel(tmp_path):
    out = save_views(selfsup.TrainConfig(method="simclr", data="digits"), tmp_path / "v.png", count=5, data=DIGITS)
    picture = Image.open(out)
    assert picture.mode == "RGB" and picture.height > 3 * 16 * 6 and picture.width >= 5 * 16 * 6


@pytest.mark.parametrize("args, fragment", [
    (["--out", "v.jpg"], "--out must end in .png"),
    (["--count", "1"], "views shows 2 to 32 images"),
    (["--method", "jigsw"], "did you mean 'jigsaw'"),
    (["--method-arg", "grid=1", "--method", "jigsaw"], "grid >= 2"),
])
def test_bad_views_arguments_are_one_line(tmp_path, capsys, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    assert main(["views", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert not list(tmp_path.iterdir())
