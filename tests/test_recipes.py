"""Every recipe in recipes/ is a valid config: known keys, a registered method, its options, augment keys."""

from pathlib import Path

import pytest

from selfsup.config import config_from_dict, load_config, validate
from selfsup.engine.build import augment_config, check_method_args
from selfsup.methods import get_method

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*/*.yaml"))


def test_recipes_cover_the_contrastive_family_on_both_scales():
    names = {(p.parent.name, p.stem) for p in RECIPES}
    for scale in ("cifar10", "imagenet"):
        for method in ("simclr", "byol", "moco", "mocov1", "npid", "barlow", "supcon", "triplet"):
            assert (scale, method) in names


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
