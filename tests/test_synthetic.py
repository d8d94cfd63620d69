"""Synthetic multi-task learning with domain adaptation (Ren & Lee, CVPR 2018): the depth, normal and contour losses
against float64 loops of their formulas, HED's class-balancing weights, the crop and flip shared by an image and its
targets against torchvision image by image, a whole step against that reference, the adversarial phases (which
parameters each one moves, the signs of their gradients), the real images' seeded global draw, views and outputs,
bad options, 2 processes like 1, and a short run on the generated scenes."""

import csv
import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

import selfsup
import selfsup.data.views as views_module
from selfsup.backbones import build_backbone, feature_map
from selfsup.data.ops.dense import GEOMETRY_MAPS
from selfsup.data.ops.video import sample_shared_crop
from selfsup.data.scenes import render_scenes
from selfsup.data.views import prepare
from selfsup.engine.optim import OptimizerSettings, build_optimizer
from selfsup.engine.step import Stepper
from selfsup.errors import UserError
from selfsup.losses.geometry import balanced_contour_bce, contour_weights, depth_error, normal_error
from selfsup.methods import Batch
from selfsup.methods.synthetic import SyntheticMultiTask
from tests.helpers import assert_two_ranks_train_like_one

SCENES = render_scenes(8, size=16, seed=3)
PLAIN = {"jitter_p": 0.0, "gray_p": 0.0}  # crops and flips only: the reference below has no colour ops


def method(size: int = 12, seed: int = 0, augment: dict | None = None, **kw) -> SyntheticMultiTask:
    from selfsup.data.augment import AugmentConfig

    torch.manual_seed(seed)
    aug = AugmentConfig(**{"crop_scale": (0.5, 1.0), **(augment if augment is not None else PLAIN)})
    return SyntheticMultiTask(build_backbone("small"), 256, size, aug, **{"decoder_dim": 16, **kw})


def batch(seed: int, phase: int = 0, n: int = 8) -> Batch:
    return Batch(SCENES.images[:n], None, torch.arange(n), torch.Generator().manual_seed(seed), 0.0, phase,
                 {k: v[:n] for k, v in SCENES.fields.items()})


# ---------------------------------------------------------------- losses against float64 loops of their formulas


def test_depth_losses_match_float64_loops_of_l1_and_berhu():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 1, 5, 4, generator=g), torch.rand(3, 1, 5, 4, generator=g)
    errors = [float(p) - float(t) for p, t in zip(pred.double().flatten(), target.double().flatten())]
    l1 = sum(abs(e) for e in errors) / len(errors)
    c = 0.2 * max(abs(e) for e in errors)  # Laina et al., 3DV 2016, eq. 1
    berhu = sum(abs(e) if abs(e) <= c else (e * e + c * c) / (2 * c) for e in errors) / len(errors)
    assert float(depth_error(pred, target, "l1")) == pytest.approx(l1, rel=1e-5)
    assert float(depth_error(pred, target, "berhu")) == pytest.approx(berhu, rel=1e-5)
    assert 0 < berhu < l1 * 10 and any(abs(e) > c for e in errors) and any(abs(e) <= c for e in errors)


def test_berhu_is_l1_below_the_threshold_and_its_gradient_does_not_flow_into_the_target():
    pred = torch.tensor([0.0, 0.1, 1.0]).view(1, 1, 1, 3).requires_grad_()
    target = torch.zeros(1, 1, 1, 3, requires_grad=True)
    depth_error(pred, target, "berhu").backward()
    # c = 0.2: |0.1| <= c costs |e| (gradient 1/3), |1.0| > c costs (e^2 + c^2) / 2c (gradient e / c / 3)
    torch.testing.assert_close(pred.grad.flatten(), torch.tensor([0.0, 1 / 3, 1.0 / 0.2 / 3]))
    assert target.grad is None


def test_normal_losses_match_float64_loops_of_the_cosine_and_the_squared_error():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 3, 4, 3, generator=g), torch.randn(2, 3, 4, 3, generator=g)
    target = target / target.norm(dim=1, keepdim=True)
    cos_terms, sq_terms = [], []
    for b in range(2):
        for y in range(4):
            for x in range(3):
                p, t = pred[b, :, y, x].double().tolist(), target[b, :, y, x].double().tolist()
                dot = sum(a * c for a, c in zip(p, t))
                cos_terms.append(1 - dot / math.sqrt(sum(a * a for a in p)) / math.sqrt(sum(c * c for c in t)))
                sq_terms.append(sum((a - c) ** 2 for a, c in zip(p, t)))
    assert float(normal_error(pred, target, "cosine")) == pytest.approx(sum(cos_terms) / len(cos_terms), rel=1e-5)
    assert float(normal_error(pred, target, "l2")) == pytest.approx(sum(sq_terms) / len(sq_terms), rel=1e-5)
    assert float(normal_error(3.0 * target, target, "cosine")) == pytest.approx(0.0, abs=1e-6)  # length is free


def test_contour_weights_are_heds_class_balance_and_weigh_both_classes_alike():
    target = torch.zeros(2, 1, 4, 5)
    target[0, 0, 1, :3] = 1  # 3 contour pixels of 20
    target[1, 0, :, :] = 1
    target[1, 0, 0, :2] = 0  # 18 of 20
    w = contour_weights(target)
    assert torch.allclose(w[0][target[0] == 1], torch.tensor(17 / 20)) and torch.allclose(w[0][target[0] == 0],
                                                                                          torch.tensor(3 / 20))
    assert torch.allclose(w[1][target[1] == 1], torch.tensor(2 / 20)) and torch.allclose(w[1][target[1] == 0],
                                                                                         torch.tensor(18 / 20))
    for b in range(2):  # beta |Y+| = (1 - beta) |Y-|
        assert float((w[b] * target[b]).sum()) == pytest.approx(float((w[b] * (1 - target[b])).sum()))


def test_balanced_contour_bce_matches_heds_formula_in_a_float64_loop():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 1, 4, 4, generator=g) * 3
    target = (torch.rand(3, 1, 4, 4, generator=g) < 0.2).float()
    target[2] = 0  # no contour at all: beta = 1, the negatives weigh 0 (HED's formula)
    per_image = []
    for b in range(3):
        z, t = logits[b].double().flatten().tolist(), target[b].flatten().tolist()
        beta = t.count(0.0) / len(t)
        pos = sum(math.log(1 / (1 + math.exp(-v))) for v, y in zip(z, t) if y == 1)
        neg = sum(math.log(1 - 1 / (1 + math.exp(-v))) for v, y in zip(z, t) if y == 0)
        per_image.append((-beta * pos - (1 - beta) * neg) / len(t))
    assert float(balanced_contour_bce(logits, target)) == pytest.approx(sum(per_image) / 3, rel=1e-5)
    assert per_image[2] == 0.0


# ---------------------------------------------------------------- views: the crop and flip shared with the targets


def reference_views(images: torch.Tensor, fields: dict, params: torch.Tensor, size: int) -> tuple[torch.Tensor, dict]:
    """Image by image with torchvision: the image cropped bilinearly, the maps by nearest neighbour, mirrored where
    flagged; the normals decoded to [-1, 1], x negated where mirrored, made unit; contours at >= 1/2."""
    xs, outs = [], {k: [] for k in GEOMETRY_MAPS}
    for i, (top, left, h, w, flip) in enumerate(params.tolist()):
        box = (int(top), int(left), int(h), int(w), [size, size])
        x = TF.resized_crop(images[i].float() / 255, *box, antialias=False)
        xs.append(TF.horizontal_flip(x) if flip else x)
        for k in GEOMETRY_MAPS:
            m = TF.resized_crop(fields[k][i].float() / 255, *box, interpolation=InterpolationMode.NEAREST_EXACT)
            outs[k].append(TF.horizontal_flip(m) if flip else m)
    targets = {k: torch.stack(v) for k, v in outs.items()}
    n = targets["normals"] * 2 - 1
    n[:, 0] *= torch.tensor([-1.0 if f else 1.0 for f in params[:, 4].tolist()]).view(-1, 1, 1)
    targets["normals"] = n / n.norm(dim=1, keepdim=True)
    targets["contours"] = (targets["contours"] >= 0.5).float()
    return torch.stack(xs), targets


def drawn_params(seed: int, m: SyntheticMultiTask, n: int = 8) -> torch.Tensor:
    a = m.aug
    return sample_shared_crop(n, 16, 16, a.crop_scale, a.crop_ratio, a.flip_p, torch.Generator().manual_seed(seed))


def test_the_image_and_its_targets_get_the_same_crop_and_flip_as_torchvision_image_by_image():
    m = method()
    x, targets = m._synthetic(batch(5))
    params = drawn_params(5, m)
    assert 0 < int((params[:, 4] > 0.5).sum()) < 8  # both flipped and plain samples
    ref_x, ref = reference_views(SCENES.images, SCENES.fields, params, 12)
    torch.testing.assert_close(x, ref_x, atol=1e-5, rtol=0)
    for k in GEOMETRY_MAPS:
        torch.testing.assert_close(targets[k], ref[k], atol=1e-6, rtol=0, msg=k)
    assert set(targets["contours"].unique().tolist()) == {0.0, 1.0}


def test_colour_augmentation_changes_the_image_but_neither_its_geometry_nor_its_targets():
    plain, coloured = method(), method(augment={"jitter_p": 1.0, "gray_p": 0.0})
    x, targets = plain._synthetic(batch(6))
    y, same = coloured._synthetic(batch(6))
    for k in GEOMETRY_MAPS:
        torch.testing.assert_close(same[k], targets[k], atol=0, rtol=0)
    assert (y - x).abs().flatten(1).amax(1).min() > 0.01  # every image jittered
    assert x.shape == y.shape and float(y.min()) >= 0 and float(y.max()) <= 1


def test_a_step_scores_the_reference_views_with_the_papers_losses():
    m = method(depth_loss="berhu", normals_loss="l2", depth_weight=0.5, normals_weight=2.0, contours_weight=3.0)
    terms = m.training_step(batch(7))
    ref_x, ref = reference_views(SCENES.images, SCENES.fields, drawn_params(7, m), 12)
    fmap = feature_map(m.backbone, prepare(ref_x))
    out = {k: d(fmap, 12) for k, d in m.decoders.items()}
    expected = {"depth": 0.5 * depth_error(out["depth"], ref["depth"], "berhu"),
                "normals": 2.0 * normal_error(out["normals"], ref["normals"], "l2"),
                "contours": 3.0 * balanced_contour_bce(out["contours"], ref["contours"])}
    assert terms.keys() == expected.keys() and m.phases == ["main"] and not hasattr(m, "discriminator")
    for k in terms:
        torch.testing.assert_close(terms[k], expected[k], atol=1e-5, rtol=1e-4, msg=k)


# ---------------------------------------------------------------- domain adaptation: real images and the phases


def test_real_images_are_held_outside_the_state_dict_and_drawn_for_the_global_batch(monkeypatch):
    m = method(real="digits")
    assert m.real_images.dtype == torch.uint8 and len(m.real_images) == 1347
    assert not any("real" in k for k in m.state_dict()) and m.phases == ["discriminator", "main"]
    one = m.real_indices(8, torch.Generator().manual_seed(4))
    torch.testing.assert_close(m.real_indices(8, torch.Generator().manual_seed(4)), one)  # seeded
    monkeypatch.setattr(views_module, "world_size", lambda: 2)
    for r in (0, 1):
        monkeypatch.setattr(views_module, "rank", lambda r=r: r)
        torch.testing.assert_close(m.real_indices(4, torch.Generator().manual_seed(4)), one[4 * r : 4 * r + 4])
    monkeypatch.setattr(views_module, "world_size", lambda: 1)
    monkeypatch.setattr(views_module, "rank", lambda: 0)
    many = m.real_indices(40000, torch.Generator().manual_seed(5))
    counts = torch.bincount(many, minlength=1347)
    assert int(many.min()) >= 0 and int(many.max()) < 1347 and len(counts) == 1347
    assert abs(float(many.double().mean()) - 673.0) < 8 and int(counts.min()) > 5  # uniform over the set


def snapshot(m: SyntheticMultiTask) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in m.named_parameters()}


def moved(before: dict, after: dict) -> set[str]:
    return {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}


def test_the_discriminator_phase_moves_only_the_discriminator_and_the_main_phase_only_trunk_and_decoders():
    m = method(real="digits", discriminator_dim=16)
    names = ("main", "discriminator")
    params = {n: m.parameters_of(n) for n in names}
    assert {id(p) for ps in params.values() for p in ps} == {id(p) for p in m.parameters()}
    assert not {id(p) for p in params["main"]} & {id(p) for p in params["discriminator"]}
    settings = {n: OptimizerSettings("adam", 1e-3, schedule="constant", warmup_epochs=0.0) for n in names}
    optimizers = {n: build_optimizer(params[n], settings[n]) for n in names}
    states = [snapshot(m)]
    for opt in optimizers.values():
        opt.register_step_post_hook(lambda *_: states.append(snapshot(m)))
    stepper = Stepper(m, m, optimizers, settings, params, 10, 10, torch.device("cpu"))
    stepper.set_rates(0)
    values = stepper.run(batch(8))
    assert moved(states[0], states[1]) == {"discriminator"}
    assert moved(states[1], states[2]) == {"backbone", "decoders"}
    assert {"discriminator/domain", "main/depth", "main/normals", "main/contours", "main/adversarial"} <= set(values)


def inputs(m: SyntheticMultiTask, seed: int) -> torch.Tensor:
    """The trunk's input of ``training_step(batch(seed))``: the synthetic views, then the real ones, drawn alike."""
    b = batch(seed)
    x, _ = m._synthetic(b)
    return prepare(torch.cat([x, m._real(len(x), b.generator)]))


def realness(m: SyntheticMultiTask, seed: int) -> tuple[float, float]:
    """The discriminator's mean real-probability of the synthetic and of the real features of a batch."""
    with torch.no_grad():
        p = torch.sigmoid(m.discriminator(feature_map(m.backbone, inputs(m, seed))))
    return float(p[:8].mean()), float(p[8:].mean())


def sgd_step(params: list[torch.nn.Parameter], loss: torch.Tensor, lr: float) -> None:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is not None:
                p -= lr * g


def logit_gradients(m: SyntheticMultiTask, b: Batch, term: str) -> torch.Tensor:
    """The gradient of a step's loss term with respect to the discriminator's logits."""
    seen = []
    hook = m.discriminator.register_forward_hook(lambda mod, args, out: seen.append(out) or out.retain_grad())
    try:
        m.training_step(b)[term].backward()
    finally:
        hook.remove()
    return seen[0].grad


def test_the_gradients_point_the_papers_way():
    """The discriminator's loss pushes the logits of real features up and of synthetic ones down, and a step on it
    widens the gap between their real-probabilities; the trunk's adversarial term pushes the logits of synthetic
    features up, and a step of the trunk on it raises their real-probability (it fools the discriminator)."""
    m = method(real="digits", discriminator_dim=16)
    m.eval()  # batch norm fixed: the probabilities below change only through the steps
    grads = logit_gradients(m, batch(9, phase=0), "domain")
    assert grads.shape == (16,) and bool((grads[:8] > 0).all()) and bool((grads[8:] < 0).all())
    grads = logit_gradients(m, batch(9, phase=1), "adversarial")
    assert grads.shape == (8,) and bool((grads < 0).all())  # only the synthetic features are scored
    syn, real = realness(m, 9)
    sgd_step(list(m.discriminator.parameters()), m.training_step(batch(9, phase=0))["domain"], 0.05)
    syn_d, real_d = realness(m, 9)
    assert real_d - syn_d > real - syn
    sgd_step(list(m.backbone.parameters()), m.training_step(batch(9, phase=1))["adversarial"], 0.01)
    assert realness(m, 9)[0] > syn_d


def test_the_discriminator_phase_is_the_cross_entropy_of_real_against_synthetic_features():
    m = method(real="digits", discriminator_dim=16)
    m.eval()
    out = m.training_step(batch(11, phase=0))
    logits = m.discriminator(feature_map(m.backbone, inputs(m, 11))).detach().double()
    ref = sum(math.log(1 + math.exp(-v)) for v in logits[8:].tolist()) / 8 \
        + sum(math.log(1 + math.exp(v)) for v in logits[:8].tolist()) / 8
    assert float(out["domain"].detach()) == pytest.approx(ref, rel=1e-5)


# ---------------------------------------------------------------- pictures and options


def test_views_show_the_input_and_the_three_targets_with_the_real_images():
    m = method(real="digits")
    rows = m.views(batch(12))
    _, targets = m._synthetic(batch(12))
    assert len(rows) == 5 and all(r.images.shape[0] == 8 for r in rows)
    assert [r.images.shape[1] for r in rows] == [3, 1, 3, 1, 3]
    torch.testing.assert_close(rows[1].images, targets["depth"])
    torch.testing.assert_close(rows[3].images, targets["contours"])
    assert rows[3].captions == [f"{v:.0%} contour" for v in targets["contours"].flatten(1).mean(1).tolist()]
    assert all(float(r.images.min()) >= 0 and float(r.images.max()) <= 1 for r in rows)


def test_outputs_show_each_prediction_under_its_target_in_zero_one():
    m = method(size=16).eval()
    with_targets = m.outputs(SCENES.images, torch.Generator(), SCENES.fields)
    assert [r.title for r in with_targets] == [f"{w} {k}" for k in GEOMETRY_MAPS for w in ("target", "predicted")]
    torch.testing.assert_close(with_targets[0].images, SCENES.fields["depth"].float() / 255)
    torch.testing.assert_close(with_targets[4].images, (SCENES.fields["contours"] >= 128).float())
    alone = m.outputs(SCENES.images, torch.Generator())
    assert [r.title for r in alone] == [f"predicted {k}" for k in GEOMETRY_MAPS]
    for r in with_targets + alone:
        assert r.images.shape[0] == 8 and float(r.images.min()) >= 0 and float(r.images.max()) <= 1


@pytest.mark.parametrize("option, message", [(dict(depth_loss="l3"), "depth_loss"),
                                             (dict(normals_loss="dot"), "normals_loss"),
                                             (dict(contours_weight=-1.0), "weights"),
                                             (dict(real="/no/such/folder"), "real=/no/such/folder")])
def test_bad_options_are_one_line_user_errors(option, message):
    with pytest.raises(UserError, match=message) as e:
        method(**option)
    assert "\n" not in str(e.value)


def test_data_without_the_targets_is_a_one_line_user_error():
    m = method()
    with pytest.raises(UserError, match="depth, normals, contours") as e:
        m.training_step(Batch(SCENES.images, None, torch.arange(8), torch.Generator(), 0.0))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- training runs


def cfg(**kw) -> selfsup.TrainConfig:
    return selfsup.TrainConfig(**{"method": "synthetic-multitask", "data": "scenes", "image_size": 16,
                                  "batch_size": 16, "steps": 3, "log_every": 1, **kw})


@pytest.mark.parametrize("real", [None, "digits"], ids=["tasks", "adversarial"])
def test_two_processes_train_like_one(tmp_path, real):
    # SGD: Adam's first steps have the size of the rate whatever the gradient, so rounding noise in gradients near 0
    # moves parameters in either direction. With the real digits (mostly black) in the batch, global batch norm's
    # variance E[x^2] - E[x]^2 of nearly constant channels cancels, and the rounding of its summed-over-ranks terms
    # reaches 3e-5 after 3 steps (1e-7 after 1); real images drawn per process rather than for the global batch move
    # the batch-norm statistics by 0.1 (measured)
    args = dict(decoder_dim=16, discriminator_dim=16, real=real)
    state = assert_two_ranks_train_like_one(tmp_path, cfg(optimizer="sgd", lr=0.05, method_args=args,
                                                          optimizers={"discriminator": {"optimizer": "sgd"}}),
                                            data="scenes", atol=2e-5 if real is None else 1e-4)
    assert ("discriminator.out.weight" in state) == (real is not None)


def test_loss_falls_and_linear_probe_beats_random_init(tmp_path):
    """On the generated scenes at 16 px (labels: the shape of the largest object), 60 steps at batch 64: linear probe
    50.4% vs 45.4% random init, 50.2% vs 42.6% with seed 1; the loss falls from 0.9-1.1 to 0.25-0.27. KNOWN GAP:
    kNN (k = 200) stays at the majority class's share, 36.8% vs 35.6% and 36.8% vs 39.6% random init (also at 24 and
    32 px, with one object per scene, 200 steps, or any one task alone: the features pooled over the image follow the
    ground that covers most of it, not the objects' shapes; measured)."""
    run = selfsup.train(cfg(steps=60, batch_size=64, log_every=10, method_args=dict(decoder_dim=32)),
                        tmp_path / "run", show_progress=False)
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "run" / "metrics.csv"))]
    m = run.metrics
    assert losses[-1] < 0.5 * losses[0], losses
    assert m["linear_top1"] > m["random_init_linear_top1"] + 0.02, m
    assert m["knn_top1"] > m["random_init_knn_top1"] - 0.15, m
