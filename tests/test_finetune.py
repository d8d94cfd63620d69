"""Fine-tuning: a frozen backbone is exactly a linear probe trained by the same SGD (against a plain reference loop),
the batches are the library's augmentations of the seeded permutation, and a tiny network learns digits."""

import math

import pytest
import torch
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.data import ImageSet, load_data
from selfsup.data.views import augmented, prepare
from selfsup.errors import UserError
from selfsup.evaluate import finetune
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.finetune import finetune_augment
from selfsup.evaluate.report import plot_curves


@pytest.fixture(scope="module")
def digits():
    data = load_data("digits")
    return data.train.subset(torch.arange(400)), data.test.subset(torch.arange(200))


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return build_backbone("small", 8, width=0.25)


def reference_probe(train_feats, train_labels, test_feats, test_labels, *, epochs, batch_size, lr, weight_decay,
                    seed):
    """A linear probe written out in float64: batch norm without affine (batch statistics in training, running
    statistics with momentum 0.1 at test), a zero-initialised linear layer, hand-written softmax cross-entropy
    gradients, SGD with momentum 0.9 and weight decay, the rate lr * (1 + cos(pi * step / steps)) / 2; batches
    from the seeded permutations. Returns the test top-1 after every epoch."""
    x, xt = train_feats.double(), test_feats.double()
    n, d = x.shape
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    w, b = torch.zeros(d, classes, dtype=torch.float64), torch.zeros(classes, dtype=torch.float64)
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    run_mean, run_var = torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    batches = max(1, n // batch_size)
    steps, step, curve = epochs * batches, 0, []
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=g).tensor_split(batches):
            xb, yb = x[idx], train_labels[idx]
            mean, var = xb.mean(0), xb.var(0, unbiased=False)
            run_mean = 0.9 * run_mean + 0.1 * mean
            run_var = 0.9 * run_var + 0.1 * xb.var(0, unbiased=True)
            z = (xb - mean) / (var + 1e-5).sqrt()
            p = (z @ w + b).softmax(1)
            p[torch.arange(len(idx)), yb] -= 1
            gw, gb = z.T @ p / len(idx) + weight_decay * w, p.sum(0) / len(idx) + weight_decay * b
            vw, vb = 0.9 * vw + gw, 0.9 * vb + gb
            rate = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            w, b = w - rate * vw, b - rate * vb
            step += 1
        pred = (((xt - run_mean) / (run_var + 1e-5).sqrt()) @ w + b).argmax(1)
        curve.append((pred == test_labels).double().mean().item())
    return curve


def test_a_frozen_backbone_is_a_linear_probe_trained_by_the_same_sgd(digits):
    train, test = digits
    net = tiny_net()
    kw = dict(epochs=4, batch_size=64, lr=0.1, weight_decay=1e-3, seed=3)
    got = finetune(net, train, test, backbone_lr=0.0, augment=False, image_size=8, **kw)
    ftr, fte = extract_features(net, train.images, 8), extract_features(net, test.images, 8)
    want = reference_probe(ftr, train.labels, fte, test.labels, **kw)
    assert got["curve"] == want and got["top1"] == want[-1]
    assert len(set(want)) > 1, "the probe learns during the test, so the rate schedule matters"


class Seen:
    """Records (training mode, input) of every forward of a module, through a hook that deep copies share."""

    def __init__(self, net: nn.Module) -> None:
        self.calls: list[tuple[bool, torch.Tensor]] = []
        net.register_forward_pre_hook(lambda m, args: self.calls.append((m.training, args[0].detach().clone())))


def test_batches_are_the_batched_augmentations_of_the_seeded_permutation(digits):
    train, test = digits
    net = tiny_net()
    seen = Seen(net)
    cfg = finetune_augment(flip_p=0.5)
    finetune(net, train, test, epochs=1, batch_size=100, image_size=12, augment=cfg, seed=5)
    training = [x for mode, x in seen.calls if mode]
    assert len(training) == 4  # 400 images in batches of 100
    g = torch.Generator().manual_seed(5)
    first = torch.randperm(len(train), generator=g).tensor_split(4)[0]
    torch.testing.assert_close(training[0], prepare(augmented(train.images[first], cfg, 12, g)))
    assert training[0].shape == (100, 3, 12, 12)


def test_the_backbone_trains_in_train_mode_or_stays_in_eval_mode_when_frozen_and_the_callers_is_untouched(digits):
    train, test = digits
    net = tiny_net()
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    seen = Seen(net)
    finetune(net, train, test, epochs=1, batch_size=100, backbone_lr=0.0)
    assert not any(mode for mode, _ in seen.calls)  # frozen: batch norm on its running statistics throughout
    seen.calls.clear()
    finetune(net, train, test, epochs=1, batch_size=100)
    assert [mode for mode, _ in seen.calls].count(True) == 4
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_fine_tuning_learns_digits_and_reports_a_curve_per_epoch(digits, tmp_path):
    train, test = digits
    lines = []
    out = finetune(tiny_net(), train, test, epochs=4, batch_size=32, lr=0.1, image_size=8, progress=lines.append,
                   augment=finetune_augment(flip_p=0.0))
    assert len(out["curve"]) == 4 and len(lines) == 4 and lines[0].startswith("epoch 1/4: train loss")
    assert out["top1"] == out["curve"][-1] > 0.6 and out["curve"][-1] > out["curve"][0]
    plot_curves([("run", out["curve"]), ("run: random init", [0.1, 0.2, 0.3, 0.4])], tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(lr=0.0), "the head's lr must be positive"),
    (dict(backbone_lr=-0.1), "the backbone's at least 0"),
    (dict(epochs=0), "a positive number of epochs"),
])
def test_bad_settings_are_one_line_errors(digits, kwargs, fragment):
    train, test = digits
    with pytest.raises(UserError, match=fragment.replace("'", ".")):
        finetune(tiny_net(), train, test, **kwargs)


def test_unlabeled_images_are_refused(digits):
    train, test = digits
    with pytest.raises(UserError, match="needs labeled train and test images"):
        finetune(tiny_net(), ImageSet(train.images), test)
