"""Data sources: digits, the three folder layouts, caching, resizing, torchvision datasets offline."""

import pytest
import torch

from selfsup.data import folder as folder_mod
from selfsup.data import load_data
from selfsup.errors import UserError
from tests.helpers import class_folder, write_images


def test_digits_is_uint8_rgb_with_a_stratified_split():
    d = load_data("digits")
    assert d.pretrain.images.dtype == torch.uint8 and d.pretrain.images.shape[1:] == (3, 8, 8)
    assert len(d.train) + len(d.test) == 1797 and d.evaluable and d.num_classes == 10
    assert d.train.images.max() == 255
    assert torch.bincount(d.test.labels).min() >= 40  # every class in the test split


def test_class_folders_give_labels_and_a_held_out_split(tmp_path):
    d = load_data(str(class_folder(tmp_path / "c", classes=3, per_class=10)))
    assert d.evaluable and d.num_classes == 3
    assert len(d.train) == 24 and len(d.test) == 6
    assert d.train.classes == ["class0", "class1", "class2"]


def test_flat_folder_is_unlabeled(tmp_path):
    write_images(tmp_path / "flat", 7)
    d = load_data(str(tmp_path / "flat"))
    assert len(d.pretrain) == 7 and not d.pretrain.labeled and not d.evaluable


def test_train_and_val_root(tmp_path):
    class_folder(tmp_path / "r" / "train", classes=2, per_class=6)
    class_folder(tmp_path / "r" / "val", classes=2, per_class=3)
    d = load_data(str(tmp_path / "r"))
    assert len(d.pretrain) == 12 and len(d.test) == 6 and d.evaluable


def test_mixed_sizes_are_resized_to_one_square_size(tmp_path):
    write_images(tmp_path / "m", 2, size=20)
    write_images(tmp_path / "m" / "sub", 1, size=9)
    (tmp_path / "m" / "sub" / "img000.png").rename(tmp_path / "m" / "odd.png")
    d = load_data(str(tmp_path / "m"), image_size=16)
    assert d.pretrain.images.shape == (3, 3, 16, 16)


def test_decoded_folders_are_cached(tmp_path, monkeypatch):
    root = class_folder(tmp_path / "c", classes=2, per_class=5)
    first = load_data(str(root))

    def no_decoding(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(folder_mod, "_decode", no_decoding)
    second = load_data(str(root))
    assert torch.equal(first.pretrain.images, second.pretrain.images)


def test_torchvision_dataset_missing_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path))
    with pytest.raises(UserError, match="cifar10 is not in .*pass --download"):
        load_data("cifar10")
