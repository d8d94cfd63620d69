"""Every recipe in recipes/ is a valid config: known keys, a registered method, its options, augment keys."""

from pathlib import Path

import pytest

from selfsup.config import config_from_dict, load_config, validate
from selfsup.engine.build import augment_config, check_method_args
from selfsup.methods import get_method

ROOT = Path(__file__).parent.parent / "recipes"
RECIPES = sorted(ROOT.glob("*/*.yaml"))
CONTRASTIVE = ("simclr", "byol", "moco", "mocov1", "npid", "barlow", "supcon", "triplet", "cmc", "and")
#: pretext tasks, generative and clustering methods
PRETEXT = ("rotnet", "jigsaw", "context", "counting", "aet", "exemplar", "decoupling", "damaged-jigsaw", "bownet",
           "colorization", "ssgan", "deepcluster", "jule", "multi-task")
#: reconstruction and generation (issue 15)
RECONSTRUCTION = ("dae", "context-encoder", "split-brain", "super-resolution", "mae", "cpc", "bigan")


@pytest.mark.parametrize("family", [CONTRASTIVE, PRETEXT, RECONSTRUCTION], ids=["contrastive", "pretext",
                                                                             "reconstruction"])
def test_recipes_cover_every_family_on_both_scales(family):
    names = {(p.parent.name, p.stem) for p in RECIPES}
    missing = [f"{scale}/{m}" for scale in ("cifar10", "imagenet") for m in family if (scale, m) not in names]
    assert not missing, f"no recipe for {', '.join(missing)}"


@pytest.mark.parametrize("scale", ["cifar10", "imagenet"])
def test_bownet_recipe_teacher_is_the_rotnet_recipe_run(scale):
    """BoWNet's teacher is the run folder its comment tells the RotNet recipe to write (--out)."""
    path = ROOT / scale / "bownet.yaml"
    teacher = load_config(path)["method_args"]["teacher"]
    text = path.read_text()
    assert f"--config recipes/{scale}/rotnet.yaml" in text and f"--out {teacher}" in text


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_is_a_valid_config(path):
    cfg = config_from_dict(load_config(path), str(path))
    validate(cfg)
    cls = get_method(cfg.method)
    check_method_args(cls, cfg.method_args)
    augment_config(cfg.augment)
    assert cfg.method == path.stem.removesuffix("v1")  # mocov1 is moco with version 1
    if path.stem == "mocov1":
        assert cfg.method_args["version"] == 1


def test_scenes_clip_recipe_holds_the_scenes_captions():
    """CLIP refuses captions longer than its text_length: the scenes recipe's must hold the scenes' caption rows."""
    from selfsup.data.scenes import render_scenes

    width = render_scenes(2, size=16, seed=0).fields["text"].shape[1]
    assert load_config(ROOT / "scenes" / "clip.yaml")["method_args"]["text_length"] >= width
