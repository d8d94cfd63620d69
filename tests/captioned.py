"""A captioned data set for the image-text methods' tests (CLIP, TextTopicNet): scikit-learn's digits, each with a
caption naming its class by a word that is no English stop word ("three" is one, to scikit-learn), and 2 gloo
processes against 1 on it."""

from __future__ import annotations

from pathlib import Path

import torch

#: the digits' class names as captions name them
NAMES = ("zero", "unit", "pair", "trio", "quartet", "quintet", "sextet", "septet", "octet", "nonet")
STYLES = ("neat", "messy", "bold", "small", "large", "slanted")


def captioned_digits(styled: bool = True, seed: int = 0):
    """Digits with ``fields["text"]``: ``"a {style} handwritten {name}"`` (a random style word of six) or, with
    ``styled=False``, the class name alone; the splits' classes are :data:`NAMES`."""
    from selfsup.data import load_data
    from selfsup.data.sources import Dataset, ImageSet
    from selfsup.data.text import encode_texts

    digits = load_data("digits")
    g = torch.Generator().manual_seed(seed)

    def with_captions(s: ImageSet) -> ImageSet:
        styles = torch.randint(len(STYLES), (len(s),), generator=g).tolist()
        texts = [f"a {STYLES[k]} handwritten {NAMES[y]}" if styled else NAMES[y]
                 for k, y in zip(styles, s.labels.tolist())]
        return ImageSet(s.images, s.labels, list(NAMES), fields={"text": encode_texts(texts)})

    train = with_captions(digits.train)
    return Dataset("captioned-digits", pretrain=train, train=train, test=with_captions(digits.test),
                   augment=digits.augment)


def _train_rank(rank: int, cfg, out: Path) -> None:
    import selfsup

    selfsup.train(cfg, out, evaluate=False, show_progress=False, data=captioned_digits())


def assert_two_ranks_train_like_one_on_captions(tmp_path: Path, cfg, atol: float = 2e-5) -> dict:
    """tests.helpers.assert_two_ranks_train_like_one on :func:`captioned_digits` (that helper takes a data spec, and
    no spec has captions yet): every parameter and buffer of the two checkpoints agree. Returns the single
    process's final state."""
    import selfsup
    from selfsup.engine.checkpoint import load_checkpoint
    from tests.helpers import run_ranks

    torch.set_num_threads(1)
    selfsup.train(cfg, tmp_path / "one", evaluate=False, show_progress=False, data=captioned_digits())
    run_ranks(_train_rank, 2, cfg, tmp_path / "two")
    one, two = (load_checkpoint(tmp_path / d)["state"] for d in ("one", "two"))
    assert one.keys() == two.keys()
    for k in one:
        if one[k].is_floating_point():
            torch.testing.assert_close(one[k], two[k], atol=atol, rtol=1e-4, msg=k)
        else:
            assert torch.equal(one[k], two[k]), k
    return one
