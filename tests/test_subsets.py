"""Class-balanced few-label subsets (the semi-supervised protocol's 1% / 10% of the labels) and few_label's scores."""

import pytest
import torch

from selfsup import evaluate
from selfsup.data import ImageSet
from selfsup.errors import UserError
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.knn import knn_top1
from selfsup.evaluate.linear import linear_top1
from selfsup.evaluate.subsets import few_label_indices, subset


def imbalanced_labels(seed=0, counts=(12, 31, 55, 103, 199)):
    """Labels of very different class sizes, shuffled."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return labels[torch.randperm(len(labels), generator=g)]


def expected_counts(labels, fraction=None, per_class=None):
    """The rule written per class: round(fraction * count) (Python's round), or per_class."""
    return {c: (per_class if per_class is not None else round(fraction * int((labels == c).sum())))
            for c in sorted(set(labels.tolist()))}


@pytest.mark.parametrize("fraction, per_class", [(0.1, None), (0.25, None), (0.5, None), (1.0, None), (None, 3),
                                                 (None, 1)])
@pytest.mark.parametrize("seed", [0, 7])
def test_every_class_keeps_exactly_its_share(fraction, per_class, seed):
    labels = imbalanced_labels(seed)
    idx = few_label_indices(labels, fraction, per_class, seed=seed)
    assert torch.equal(idx, idx.unique()), "sorted and without repeats"
    assert 0 <= int(idx.min()) and int(idx.max()) < len(labels)
    picked = labels[idx].tolist()
    assert {c: picked.count(c) for c in sorted(set(labels.tolist()))} == expected_counts(labels, fraction, per_class)
    if fraction == 1.0:
        assert torch.equal(idx, torch.arange(len(labels)))


def test_the_same_seed_gives_the_same_subset_and_others_differ():
    labels = imbalanced_labels()
    a, b = few_label_indices(labels, 0.1, seed=3), few_label_indices(labels, 0.1, seed=3)
    assert torch.equal(a, b)
    others = {tuple(few_label_indices(labels, 0.1, seed=s).tolist()) for s in range(10)}
    assert len(others) == 10


def test_every_image_of_a_class_is_picked_with_the_frequency_of_its_class_share():
    labels = imbalanced_labels(counts=(10, 27, 61, 102))
    draws = 2000
    hits = torch.zeros(len(labels))
    for seed in range(draws):
        hits[few_label_indices(labels, 0.2, seed=seed)] += 1
    counts = torch.bincount(labels)
    share = torch.tensor([round(0.2 * int(c)) / int(c) for c in counts])[labels]  # k_c / n_c for each image
    freq = hits / draws
    sigma = (share * (1 - share) / draws).sqrt()
    assert ((freq - share).abs() < 5 * sigma).all(), (freq - share).abs().max()
    # images are picked jointly at random, not in fixed groups: two images of a class are picked together as
    # often as independent draws without replacement would (k/n * (k-1)/(n-1))
    c = int(counts.argmax())
    first, second = torch.nonzero(labels == c).flatten()[:2].tolist()
    together = sum(bool(set(few_label_indices(labels, 0.2, seed=s).tolist()) >= {first, second})
                   for s in range(draws)) / draws
    k, n = round(0.2 * int(counts[c])), int(counts[c])
    expected = k / n * (k - 1) / (n - 1)
    assert abs(together - expected) < 5 * (expected * (1 - expected) / draws) ** 0.5


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(fraction=0.0), "--fraction must be in (0, 1] (got 0)"),
    (dict(fraction=1.5), "--fraction must be in (0, 1] (got 1.5)"),
    (dict(fraction=-0.1), "--fraction must be in (0, 1]"),
    (dict(), "exactly one of --fraction and --per-class"),
    (dict(fraction=0.1, per_class=2), "exactly one of --fraction and --per-class"),
    (dict(per_class=0), "--per-class must be a positive integer"),
    (dict(per_class=41), "--per-class 41 is more than class 'cat' has (40 images)"),
    (dict(fraction=0.001), "--fraction 0.001 leaves class 'cat' (40 images) with no image; use at least 0.025 or "
                           "--per-class"),
])
def test_bad_subsets_are_one_line_errors_naming_the_class(kwargs, fragment):
    labels = torch.cat([torch.zeros(40, dtype=torch.long), torch.ones(500, dtype=torch.long)])
    with pytest.raises(UserError) as e:
        few_label_indices(labels, classes=["cat", "dog"], **kwargs)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_the_suggested_fraction_keeps_every_class():
    labels = torch.repeat_interleave(torch.tensor([0, 1, 2]), torch.tensor([7, 300, 33]))
    with pytest.raises(UserError) as e:
        few_label_indices(labels, 0.05)
    suggested = float(str(e.value).split("use at least ")[1].split()[0])
    assert 1 / 7 <= suggested < 1 / 7 * 1.1
    assert len(few_label_indices(labels, suggested)) > 0


def test_subset_keeps_images_labels_and_paths_together():
    images = torch.arange(6).view(6, 1, 1, 1).expand(6, 3, 2, 2).to(torch.uint8)
    data = ImageSet(images, torch.tensor([0, 1, 0, 1, 0, 1]), ["a", "b"], [f"p{i}" for i in range(6)])
    part = subset(data, torch.tensor([1, 4]))
    assert part.images[:, 0, 0, 0].tolist() == [1, 4] and part.labels.tolist() == [1, 0]
    assert part.paths == ["p1", "p4"] and part.classes == ["a", "b"]


def test_few_label_scores_are_the_probes_on_each_drawn_subset(monkeypatch):
    from selfsup.backbones import build_backbone

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(120) % 3
    images = torch.randint(0, 100, (120, 3, 8, 8), generator=g, dtype=torch.uint8)
    images[labels == 1, 0] += 150
    images[labels == 2, 2] += 150
    train, test = ImageSet(images[:90], labels[:90]), ImageSet(images[90:], labels[90:])
    torch.manual_seed(0)
    net = build_backbone("small", 8, width=0.25)
    out = evaluate.few_label(net, train, test, fractions=[0.5], draws=2, k=5)
    assert list(out) == ["50%"] and list(out["50%"]) == ["knn_top1", "linear_top1"]
    ftr, fte = extract_features(net, train.images, 8), extract_features(net, test.images, 8)
    draws = [few_label_indices(train.labels, 0.5, seed=seed) for seed in range(2)]
    assert not torch.equal(*draws)
    assert out["50%"]["knn_top1"] == [knn_top1(ftr[i], train.labels[i], fte, test.labels, k=5) for i in draws]
    assert out["50%"]["linear_top1"][1] == linear_top1(ftr[draws[1]], train.labels[draws[1]], fte, test.labels)
    monkeypatch.setattr(evaluate, "linear_top1", lambda *a: 0.5)  # the L-BFGS probe is checked above
    tuned = evaluate.few_label(net, train, test, per_class=5, draws=1, finetune_args=dict(epochs=1))
    assert list(tuned) == ["5 per class"] and len(tuned["5 per class"]["finetune_top1"]) == 1
    with pytest.raises(UserError, match="--draws must be a positive integer"):
        evaluate.few_label(net, train, test, draws=0)
    with pytest.raises(UserError, match="leaves class '0'"):
        evaluate.few_label(net, train, test, fractions=[0.01])
