"""BoWNet: the soft bag of words and the loss against loop references (float64), the cosine classifier, the CutMix op
against a per-image reference and Yun et al.'s sampling loop, the vocabulary built before the first step and saved
with the run, the frozen teacher, a BoWNet run as the next teacher, views(), 2 processes vs 1, and the smoke run
(loss falls, kNN beats random init) with a RotNet teacher trained here."""

import csv
import math
import random

import pytest
import torch

import selfsup
from selfsup.config import TrainConfig
from selfsup.data import load_data
from selfsup.data.ops.cutmix import cutmix, kept_fraction, partners, sample_cutmix
from selfsup.data.views import eval_view
from selfsup.dynamics.bow import mean_nearest_distance, soft_bow
from selfsup.engine.build import method_from_checkpoint
from selfsup.heads.cosine import CosineClassifier
from selfsup.losses.soft import soft_cross_entropy
from selfsup.methods import Batch
from selfsup.methods.panels import bars
from tests.helpers import assert_two_ranks_train_like_one

DIGITS = load_data("digits")


def reference_bow(fmap: torch.Tensor, words: torch.Tensor, inv_delta: float, pool: str) -> torch.Tensor:
    """Gidaris et al.'s bag of words, loop by loop in float64: soft assignment of every location to the words,
    pooled (sum of the codes, or their maximum) over the locations, L1-normalised."""
    b, c, h, w = fmap.shape
    out = torch.zeros(b, len(words), dtype=torch.float64)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                f = fmap[i, :, y, x].double()
                e = [math.exp(-inv_delta * float(((f - v.double()) ** 2).sum())) for v in words]
                for k in range(len(words)):
                    q = e[k] / sum(e)
                    out[i, k] = out[i, k] + q if pool == "avg" else max(out[i, k], q)
        out[i] /= out[i].sum()
    return out


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_the_soft_bag_of_words_matches_a_loop_reference(pool):
    g = torch.Generator().manual_seed(0)
    fmap, words = torch.randn(3, 4, 3, 2, generator=g), torch.randn(5, 4, generator=g)
    torch.testing.assert_close(soft_bow(fmap, words, 0.7, pool).double(), reference_bow(fmap, words, 0.7, pool),
                               atol=1e-6, rtol=1e-5)
    hard = soft_bow(fmap, words, 1e4, "avg")  # a large inverse temperature: the counts of the nearest words
    nearest = ((fmap.flatten(2).transpose(1, 2).unsqueeze(2) - words) ** 2).sum(-1).argmin(-1)
    counts = torch.stack([torch.bincount(n, minlength=5) for n in nearest]).float() / 6
    torch.testing.assert_close(hard, counts, atol=1e-5, rtol=0)


def test_the_mean_nearest_distance_is_the_mean_squared_distance_to_the_closest_word():
    g = torch.Generator().manual_seed(1)
    feats, words = torch.randn(20, 3, generator=g), torch.randn(4, 3, generator=g)
    expected = sum(min(float(((f.double() - v.double()) ** 2).sum()) for v in words) for f in feats) / 20
    assert float(mean_nearest_distance(feats, words)) == pytest.approx(expected, rel=1e-6)


def test_the_loss_is_the_cross_entropy_against_the_soft_targets():
    g = torch.Generator().manual_seed(2)
    logits, targets = torch.randn(4, 6, generator=g), torch.rand(4, 6, generator=g)
    targets /= targets.sum(1, keepdim=True)
    expected = 0.0
    for z, y in zip(logits.double(), targets.double()):
        log_z = sum(math.exp(float(v)) for v in z)
        expected -= sum(float(y[k]) * (float(z[k]) - math.log(log_z)) for k in range(6)) / 4
    assert float(soft_cross_entropy(logits, targets)) == pytest.approx(expected, rel=1e-5)


def test_the_cosine_classifier_is_a_scaled_cosine():
    head = CosineClassifier(3, 5, scale=7.0)
    x = torch.randn(2, 3)
    cos = torch.tensor([[float(a @ w / (a.norm() * w.norm())) for w in head.weight.detach()] for a in x])
    torch.testing.assert_close(head(x), 7.0 * cos, atol=1e-5, rtol=1e-5)
    assert head.scale.requires_grad and not CosineClassifier(3, 5, learn_scale=False).scale.requires_grad


def test_cutmix_pastes_each_box_from_the_partner_as_a_per_image_reference():
    g = torch.Generator().manual_seed(3)
    images = torch.rand(5, 3, 10, 12, generator=g)
    boxes = sample_cutmix(5, 10, 12, 0.8, g)
    out = cutmix(images, images[partners(5)], boxes)
    for b in range(5):
        top, left, h, w = (int(v) for v in boxes[b])
        expected = images[b].clone()
        other = [1, 0, 3, 2, 4][b]
        expected[:, top : top + h, left : left + w] = images[other][:, top : top + h, left : left + w]
        assert torch.equal(out[b], expected)
        assert float(kept_fraction(boxes, 10, 12)[b]) == pytest.approx(1 - h * w / 120)
    assert partners(6).tolist() == [1, 0, 3, 2, 5, 4] and partners(3).tolist() == [1, 0, 2]


def reference_cutmix_box(size: int, rng: random.Random) -> tuple[int, int, int, int]:
    """Yun et al.'s box (their rand_bbox, alpha = 1), drawn with Python's random: (top, left, h, w)."""
    lam = rng.random()
    cut = int(size * math.sqrt(1 - lam))
    cy, cx = rng.randrange(size), rng.randrange(size)
    y1, y2 = max(cy - cut // 2, 0), min(cy + cut // 2, size)
    x1, x2 = max(cx - cut // 2, 0), min(cx + cut // 2, size)
    return y1, x1, y2 - y1, x2 - x1


def test_cutmix_boxes_follow_yun_et_al_s_law_and_the_rate():
    n, size = 40_000, 32
    boxes = sample_cutmix(n, size, size, 0.3, torch.Generator().manual_seed(4))
    assert float(boxes.min()) >= 0 and bool((boxes[:, 0] + boxes[:, 2] <= size).all())
    assert bool((boxes[:, 1] + boxes[:, 3] <= size).all()) and bool(boxes.eq(boxes.round()).all())
    applied = boxes[:, 2] * boxes[:, 3] > 0
    assert float(applied.double().mean()) == pytest.approx(0.3, abs=0.01)
    rng = random.Random(0)
    ref = torch.tensor([reference_cutmix_box(size, rng) for _ in range(n)], dtype=torch.float64)
    ours = kept_fraction(sample_cutmix(n, size, size, 1.0, torch.Generator().manual_seed(5)).double(), size, size)
    theirs = kept_fraction(ref, size, size)
    assert float(ours.mean()) == pytest.approx(float(theirs.mean()), abs=0.006)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert float(ours.quantile(q)) == pytest.approx(float(theirs.quantile(q)), abs=0.02)


def test_bars_draw_each_histogram_scaled_to_its_largest_word():
    picture = bars(torch.tensor([[0.5, 0.25, 0.25, 0.0]]), height=8)
    assert picture.shape == (1, 1, 8, 4)
    assert picture[0, 0].sum(0).tolist() == [8.0, 4.0, 4.0, 0.0]
    assert picture[0, 0, -1, 0] == 1 and picture[0, 0, 0, 1] == 0  # bars grow from the bottom


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A RotNet trained a few steps on digits, 16 px: the run folder."""
    out = tmp_path_factory.mktemp("rotnet")
    cfg = TrainConfig(method="rotnet", data="digits", steps=20, batch_size=64, image_size=16, log_every=10)
    selfsup.train(cfg, out, evaluate=False, show_progress=False, data=DIGITS)
    return out


def bownet(teacher, out, steps=3, evaluate=False, batch_size=32, **args):
    cfg = TrainConfig(method="bownet", data="digits", steps=steps, batch_size=batch_size, image_size=16, log_every=10,
                      method_args=dict(teacher=str(teacher), **{"num_words": 16, "locations": 2, **args}))
    return selfsup.train(cfg, out, evaluate=evaluate, show_progress=False, data=DIGITS)


def test_the_vocabulary_is_built_before_the_first_step_and_saved_with_the_frozen_teacher(teacher, tmp_path):
    run = bownet(teacher, tmp_path / "bow")
    rot = method_from_checkpoint(teacher)[0]
    words, distance = run.method.vocabulary, run.method.nearest_distance
    assert words.shape == (16, 128) and float(words.abs().sum()) > 0 and float(distance) > 0  # block3 of small
    restored = method_from_checkpoint(tmp_path / "bow")[0]
    assert torch.equal(restored.vocabulary, words) and torch.equal(restored.nearest_distance, distance)
    reference = rot.encoder().state_dict()
    for k, v in restored.teacher.state_dict().items():  # the teacher did not move, batch-norm statistics included
        assert torch.equal(reference[k], v), k
    assert not any(p.requires_grad for p in restored.teacher.parameters())
    # the targets: the teacher's map of the unperturbed images, softly assigned to the saved words
    images = DIGITS.pretrain.images[:4]
    rot.eval()
    fmap = rot.backbone.forward_stages(eval_view(images, 16))[2]
    torch.testing.assert_close(restored.targets(images), soft_bow(fmap, words, 15.0 / distance), atol=1e-5, rtol=1e-4)


def test_a_bownet_run_teaches_the_next_one(teacher, tmp_path):
    first = bownet(teacher, tmp_path / "first")
    second = bownet(tmp_path / "first", tmp_path / "second", steps=2, stage="block4")
    reference = first.method.backbone.state_dict()
    for k, v in second.method.teacher.state_dict().items():
        assert torch.equal(reference[k], v), k
    assert second.method.vocabulary.shape == (16, 256)


def test_views_show_the_perturbed_input_and_the_top_words_of_its_target(teacher, tmp_path):
    method = bownet(teacher, tmp_path / "bow", steps=1).method
    images = DIGITS.pretrain.images[:6]
    panels = method.views(Batch(images, None, torch.arange(6), torch.Generator().manual_seed(1), 0.0))
    x, target, lam = method._inputs(Batch(images, None, torch.arange(6), torch.Generator().manual_seed(1), 0.0))
    assert torch.equal(panels[1].images, x) and panels[2].images.shape == (6, 1, 32, 16)
    for caption, t in zip(panels[2].captions, target):
        assert [int(w.split()[0][1:]) for w in caption.split(", ")] == t.topk(3).indices.tolist()
    own = method.targets(images)
    torch.testing.assert_close(target, lam[:, None] * own + (1 - lam[:, None]) * own[partners(6)])
    assert [c != "" for c in panels[1].captions] == (lam < 1).tolist()


def test_two_processes_train_bownet_like_one(teacher, tmp_path):
    cfg = TrainConfig(method="bownet", data="digits", batch_size=32, image_size=16, steps=3, log_every=1,
                      method_args=dict(teacher=str(teacher), num_words=16, locations=2))
    assert_two_ranks_train_like_one(tmp_path, cfg)


def test_loss_falls_and_knn_beats_random_init(teacher, tmp_path):
    run = bownet(teacher, tmp_path / "smoke", steps=30, evaluate=True, batch_size=64, num_words=32, locations=4)
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "smoke" / "metrics.csv"))]
    assert losses[-1] < losses[0], losses
    assert run.metrics["knn_top1"] > run.metrics["random_init_knn_top1"] + 0.01, run.metrics
