"""Evaluation protocol: kNN against a slow reference, linear probe, per-layer probes, feature extraction."""

import math

import pytest
import torch

from selfsup import evaluate
from selfsup.backbones import build_backbone
from selfsup.data import ImageSet, load_data
from selfsup.errors import UserError
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.knn import knn_predict
from selfsup.evaluate.linear import linear_top1


def knn_reference(train, train_y, test, k, t, classes):
    """InstDisc's weighted kNN written out: cosine sims, top-k, class votes sum exp(sim / t)."""
    preds = []
    for q in test:
        sims = [(float(q @ x / (q.norm() * x.norm())), int(y)) for x, y in zip(train, train_y)]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * classes
        for s, y in sims[:k]:
            votes[y] += math.exp(s / t)
        preds.append(max(range(classes), key=lambda c: votes[c]))
    return torch.tensor(preds)


@pytest.mark.parametrize("k, t", [(1, 0.1), (5, 0.07), (20, 0.5)])
def test_knn_matches_reference(k, t):
    g = torch.Generator().manual_seed(k)
    train, test = torch.randn(60, 8, generator=g), torch.randn(25, 8, generator=g)
    train_y = torch.randint(0, 4, (60,), generator=g)
    got = knn_predict(train, train_y, test, k=k, temperature=t, num_classes=4, chunk=7)
    assert torch.equal(got, knn_reference(train.double(), train_y, test.double(), k, t, 4))


def test_linear_probe_separates_separable_classes_and_fails_on_noise():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 20, generator=g) * 4
    y = torch.randint(0, 5, (500,), generator=g)
    x = centers[y] + torch.randn(500, 20, generator=g)
    assert linear_top1(x[:400], y[:400], x[400:], y[400:]) > 0.95
    noise = torch.randn(500, 20, generator=g)
    assert linear_top1(noise[:400], y[:400], noise[400:], y[400:]) < 0.5


def test_extract_features_matches_forward_and_restores_mode():
    net = build_backbone("small")
    net.train()
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    feats = extract_features(net, images, 16, batch_size=4)
    assert net.training
    net.eval()
    from selfsup.data.views import eval_view

    with torch.no_grad():
        torch.testing.assert_close(feats, net(eval_view(images, 16)))
    stages = extract_features(net, images, 16, stages=True)
    assert len(stages) == 4 and all(s.shape[0] == 10 for s in stages)


def test_layers_and_knn_api_on_tiny_split():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    images = torch.randint(0, 100, (40, 3, 16, 16), generator=g, dtype=torch.uint8)
    images[labels == 1, 0] += 150  # class 1 is redder
    train, test = ImageSet(images[:30], labels[:30]), ImageSet(images[30:], labels[30:])
    net = build_backbone("small")
    per_layer = evaluate.layers(net, train, test)
    assert list(per_layer) == ["block1", "block2", "block3", "block4"]
    assert all(0.0 <= v <= 1.0 for v in per_layer.values())
    assert evaluate.knn(net, train, test, k=5) > 0.8


def test_evaluation_defaults_to_the_size_the_encoder_was_trained_at(tmp_path):
    """The README's snippet: ``selfsup.evaluate.knn(run.encoder, data.train, data.test)`` on digits (8 px images)
    evaluates at the 16 px the run trained at, and so agrees with the run's own final score."""
    import selfsup

    data = load_data("digits")
    run = selfsup.pretrain("simclr", data="digits", steps=3, batch_size=64, device="cpu", out=tmp_path / "a",
                           progress=False)
    assert run.config.image_size == 16 and data.train.images.shape[-1] == 8
    assert selfsup.evaluate.knn(run.encoder, data.train, data.test) == pytest.approx(run.metrics["knn_top1"])
    assert selfsup.evaluate.knn(run.encoder, data.train, data.test, image_size=8) != run.metrics["knn_top1"]
    reloaded, _ = selfsup.method_from_checkpoint(tmp_path / "a")
    assert selfsup.evaluate.trained_size(reloaded.encoder()) == 16


class Pixels(torch.nn.Module):
    """A fixed 'backbone': the image average-pooled to 2 x 2, flattened."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a device for extract_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1) + self.anchor


def brightening(n: int, seed: int) -> ImageSet:
    """Clips of 3 frames that brighten (label 1) or darken (label 0) by 40 levels a frame around a middle frame of
    the same random brightness in either class: one frame tells nothing, two tell the class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    base = torch.randint(60, 190, (n, 1, 1, 1, 1), generator=g).float()
    step = (labels * 2 - 1).float().view(n, 1, 1, 1, 1) * 40 * torch.tensor([-1.0, 0, 1]).view(1, 3, 1, 1, 1)
    clips = (base + step + torch.randn(n, 3, 3, 8, 8, generator=g) * 4).clamp(0, 255).to(torch.uint8)
    return ImageSet(clips[:, 1].contiguous(), labels, ["darker", "brighter"], fields={"frames": clips})


def test_a_probe_over_frames_sees_each_frame_side_by_side_and_tells_what_one_frame_cannot():
    torch.manual_seed(0)
    data = load_data("moving-objects:motion", image_size=16)
    net = build_backbone("small", image_size=16, width=0.25).eval()
    ftr, _ = evaluate._features(net, data.train, data.test, 16, "cpu", frames=[0, -1])
    clips = data.train.fields["frames"]
    expected = torch.cat([extract_features(net, clips[:, i], 16) for i in (0, clips.shape[1] - 1)], 1)
    assert torch.allclose(ftr, expected)  # frame order kept, each frame through the evaluation transform
    train, test, pixels = brightening(300, 0), brightening(200, 1), Pixels()
    one = evaluate.probe(pixels, train, test)  # the middle frame alone
    several = evaluate.probe(pixels, train, test, frames=[0, 2])
    assert one["linear_top1"] < 0.65 and several["linear_top1"] > 0.95, (one, several)
    with pytest.raises(UserError, match="not indices into clips of 3 frames"):
        evaluate.knn(pixels, train, test, frames=[0, 3])
    digits = load_data("digits", image_size=8)
    with pytest.raises(UserError, match="needs clips"):
        evaluate.probe(pixels, digits.train, digits.test, frames="all")
