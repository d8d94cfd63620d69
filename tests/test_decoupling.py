"""Rotation feature decoupling: every loss term against a float64 loop reference of the paper's formula, the
ambiguity weighting and when it starts, the bank, a step against a reference, views, and 2 processes vs 1."""

import math

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.config import TrainConfig
from selfsup.data import load_data
from selfsup.data.ops.base import resize
from selfsup.data.ops.rotate import rotations
from selfsup.data.views import augmented, prepare
from selfsup.engine.epoch import Epoch
from selfsup.errors import UserError
from selfsup.losses.decoupling import rotation_ambiguity_weights, rotation_invariance_loss, weighted_rotation_loss
from selfsup.methods import Batch
from selfsup.methods.decoupling import Decoupling
from tests.helpers import assert_two_ranks_train_like_one


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _softmax(row):
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def test_the_weight_of_a_rotated_image_is_one_minus_its_upright_probability_to_the_gamma():
    logits = torch.randn(12, 4, generator=_gen(0)) * 3
    labels = torch.arange(4).repeat_interleave(3)
    for gamma in (1.0, 2.0, 0.5):
        w = rotation_ambiguity_weights(logits, labels, gamma)
        for i in range(12):
            p_upright = _softmax(logits[i].double().tolist())[0]
            expected = 1.0 if labels[i] == 0 else 1.0 - p_upright**gamma
            assert float(w[i]) == pytest.approx(expected, abs=1e-6)
    assert not rotation_ambiguity_weights(logits.requires_grad_(), labels).requires_grad


def test_the_rotation_loss_is_the_mean_of_the_weighted_cross_entropies():
    logits = torch.randn(10, 4, generator=_gen(1), requires_grad=True)
    labels = torch.randint(0, 4, (10,), generator=_gen(2))
    weights = torch.rand(10, generator=_gen(3))
    loss = weighted_rotation_loss(logits, labels, weights)
    expected = sum(-float(weights[i]) * math.log(_softmax(logits[i].double().tolist())[int(labels[i])])
                   for i in range(10)) / 10
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert logits.grad is not None


def test_the_invariance_loss_is_the_mean_squared_distance_to_the_mean_over_rotations_per_dimension():
    f = torch.randn(4, 5, 6, generator=_gen(4), dtype=torch.float64, requires_grad=True)
    loss = rotation_invariance_loss(f)
    values, total = f.detach().tolist(), 0.0
    for i in range(5):
        mean = [sum(values[k][i][j] for k in range(4)) / 4 for j in range(6)]
        total += sum((values[k][i][j] - mean[j]) ** 2 for k in range(4) for j in range(6))
    assert float(loss.detach()) == pytest.approx(total / (4 * 5 * 6), rel=1e-6)
    loss.backward()  # the mean is a fixed target: each feature's gradient is 2 (f - mean) / (K N d)
    torch.testing.assert_close(f.grad, 2 * (f - f.mean(0, keepdim=True)).detach() / 120)


DIGITS = load_data("digits")


def _method(**kw):
    torch.manual_seed(0)
    return Decoupling(build_backbone("small"), 256, 8, num_samples=len(DIGITS.pretrain), **kw)


def _instance_reference(z, bank, idx, noise, t):
    """-log exp(v . m_i / t) / (exp(v . m_i / t) + sum_n exp(v . n / t)) per sample, averaged (float64 loops)."""
    total = 0.0
    for b in range(len(z)):
        v = z[b].double() / z[b].double().norm()
        pos = math.exp(float(v @ bank[idx[b]].double()) / t)
        neg = sum(math.exp(float(v @ n.double()) / t) for n in noise)
        total -= math.log(pos / (pos + neg))
    return total / len(z)


@pytest.mark.parametrize("progress", [0.2, 0.9])
def test_a_step_computes_the_three_terms_on_the_split_features_as_a_reference_does(progress):
    method = _method(negatives=50, rotation_dim=100, instance_weight=0.5, invariance_weight=3.0)
    idx = torch.tensor([5, 17, 3, 900, 42, 11])
    images = DIGITS.pretrain.images[idx]
    terms = method.training_step(Batch(images, None, idx, _gen(7), progress))
    assert set(terms) == {"rotation", "instance", "invariance"}
    g = _gen(7)  # the same draws in the same order: the augmentation, then the negatives
    x, target = rotations(augmented(images, method.aug, 8, g))
    noise = method.bank[torch.randint(len(DIGITS.pretrain), (50,), generator=g)]
    assert target.tolist() == [k for k in range(4) for _ in range(6)]
    feats = method.backbone(prepare(x)).detach().double()  # batch norm in training mode: the same batch
    rot, rest = feats[:, :100], feats[:, 100:].reshape(4, 6, 156)
    logits = method.classifier(rot.float()).detach().double()
    weights = [1.0 if target[i] == 0 or progress < 210 / 245 else 1.0 - _softmax(logits[i].tolist())[0] ** 2
               for i in range(24)]
    rotation = sum(-weights[i] * math.log(_softmax(logits[i].tolist())[int(target[i])]) for i in range(24)) / 24
    mean = rest.mean(0)
    invariance = float(((rest - mean) ** 2).sum()) / (24 * 156)
    z = method.head(mean.float()).detach()
    instance = _instance_reference(z, method.bank, idx, noise, 0.07)
    assert float(terms["rotation"].detach()) == pytest.approx(rotation, rel=1e-4)
    assert float(terms["invariance"].detach()) == pytest.approx(3.0 * invariance, rel=1e-4)
    assert float(terms["instance"].detach()) == pytest.approx(0.5 * instance, rel=1e-4)
    if progress > 0.5:  # the weights are on: some rotated image counts less than 1
        assert min(weights) < 1.0


def test_the_bank_starts_from_the_initial_embeddings_and_moves_towards_each_steps():
    method = _method(negatives=0)
    method.on_epoch_start(Epoch(0, DIGITS.pretrain.images, method, {}, torch.device("cpu"), seed=0))
    with torch.no_grad():
        _, _, z = method._split(rotations(resize(DIGITS.pretrain.images[:512], 8))[0])
    torch.testing.assert_close(method.bank[:512], torch.nn.functional.normalize(z, dim=1), atol=1e-5, rtol=1e-4)
    idx = torch.tensor([1, 2, 3, 4])
    before = method.bank.clone()
    method.training_step(Batch(DIGITS.pretrain.images[idx], None, idx, _gen(1), 0.0))
    new = method._pending.rows[1]
    method.after_step(0.0)
    expected = torch.nn.functional.normalize(0.5 * before[idx] + 0.5 * new, dim=1)
    torch.testing.assert_close(method.bank[idx], expected)
    assert torch.equal(method.bank[5:], before[5:])


def test_bad_options_are_one_line_errors():
    with pytest.raises(UserError, match="rotation_dim must be between 1 and 255"):
        _method(rotation_dim=256)
    with pytest.raises(UserError, match="gamma"):
        _method(gamma=0.0)


def test_views_show_the_four_rotations_with_their_angle_and_weight():
    method = _method()
    idx = torch.arange(5)
    panels = method.views(Batch(DIGITS.pretrain.images[idx], None, idx, _gen(2), 0.0))
    assert len(panels) == 4 and all(p.images.shape == (5, 3, 8, 8) for p in panels)
    x, _ = rotations(augmented(DIGITS.pretrain.images[idx], method.aug, 8, _gen(2)))
    for k, p in enumerate(panels):
        torch.testing.assert_close(p.images, x[5 * k:5 * (k + 1)])  # the step's own rotated views
        assert all(c.startswith(f"{90 * k} deg, w=") for c in p.captions)
        weights = [float(c.split("w=")[1]) for c in p.captions]
        assert all(0 <= w <= 1 for w in weights) and (k > 0 or weights == [1.0] * 5)


def test_two_processes_train_decoupling_like_one(tmp_path):
    cfg = TrainConfig(method="decoupling", data="digits", batch_size=32, image_size=8, steps=3, log_every=1,
                      method_args=dict(negatives=64, head_hidden_dim=32, weight_from=0.3))
    assert_two_ranks_train_like_one(tmp_path, cfg)
