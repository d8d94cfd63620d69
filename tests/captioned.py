"""A captioned data set for the image-text methods' tests (CLIP, TextTopicNet): scikit-learn's digits, each with a
caption naming its class by a word that is no English stop word ("three" is one, to scikit-learn); its data spec in
tests.helpers is ``captioned-digits``."""

from __future__ import annotations

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

