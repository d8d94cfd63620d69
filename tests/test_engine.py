"""Engine: exact resume, NaN stop with the last good checkpoint intact, atomic checkpoints, schedules, EMA."""

import csv
import time

import pytest
import torch
from torch import nn

import selfsup
import selfsup.engine.checkpoint as C
from selfsup.config import TrainConfig
from selfsup.data import load_data
from selfsup.dynamics.ema import cosine_tau, ema_update
from selfsup.engine.checkpoint import CheckpointWriter, load_checkpoint, save_checkpoint
from selfsup.engine.optim import LARS, lr_at
from selfsup.errors import TrainingDiverged, UserError
from tests.helpers import breaks_after

DIGITS = load_data("digits")


def small_cfg(**kw):
    base = dict(method="simclr", data="digits", batch_size=64, image_size=8, steps=12, log_every=3)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_resume_equals_straight_run(tmp_path, method):
    straight = selfsup.train(small_cfg(method=method), tmp_path / "a", evaluate=False, show_progress=False,
                             data=DIGITS)
    selfsup.train(small_cfg(method=method), tmp_path / "b", evaluate=False, show_progress=False, data=DIGITS,
                  stop_at=5)
    assert not load_checkpoint(tmp_path / "b")["finished"]
    resumed = selfsup.train(small_cfg(), resume=tmp_path / "b", evaluate=False, show_progress=False, data=DIGITS)
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "b" / "metrics.csv"))]
    assert steps == sorted(set(steps)) and steps[0] == 3 and 5 in steps and steps[-1] == 12  # one log, no repeats


def test_time_limit_stops_at_a_log_line_and_the_run_resumes_exactly(tmp_path):
    straight = selfsup.train(small_cfg(), tmp_path / "a", evaluate=False, show_progress=False, data=DIGITS)
    stopped = selfsup.train(small_cfg(), tmp_path / "b", evaluate=False, show_progress=False, data=DIGITS,
                            time_limit=0.0)
    assert stopped.metrics == dict(steps=3, total_steps=12, stopped=True)  # the first log line, step 3
    assert load_checkpoint(tmp_path / "b")["step"] == 3
    resumed = selfsup.train(small_cfg(), resume=tmp_path / "b", evaluate=False, show_progress=False, data=DIGITS,
                            time_limit=60.0)
    assert resumed.metrics["steps"] == 12
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    data = load_data("digits")
    cfg = small_cfg(batch_size=256, steps=40, log_every=1)  # 5 steps per epoch: checkpoints at 5, 10
    with pytest.raises(TrainingDiverged, match=r"loss became nan by step 12.*last good checkpoint"):
        selfsup.train(cfg, tmp_path / "run", backbone=breaks_after(11, "output"), evaluate=False,
                      show_progress=False, data=data)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["step"] == 10 and not ckpt["finished"]
    assert all(torch.isfinite(v).all() for v in ckpt["state"].values() if v.is_floating_point())


def payload(step, **kw):
    """The smallest payload load_checkpoint accepts."""
    return dict(config={}, step=step, state={}, image_size=8, num_classes=0, **kw)


def test_checkpoint_write_is_atomic_and_a_failed_write_leaves_no_debris(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, payload(1))
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):  # half a file, then the disk is full
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as h:
            h.truncate(10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(UserError, match="No space left on device; the previous checkpoint is intact"):
        save_checkpoint(path, payload(2))
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


def test_background_checkpoint_writes_what_was_there_at_save(tmp_path, monkeypatch):
    """The training thread may change its tensors at once: the file holds them as they were at save()."""
    write = C.save_checkpoint

    def slow_write(path, payload):
        time.sleep(0.2)  # the training thread goes on meanwhile
        write(path, payload)

    monkeypatch.setattr(C, "save_checkpoint", slow_write)
    path, writer = tmp_path / "checkpoint.pt", CheckpointWriter()
    weights = {"w": torch.zeros(3), "bn": {"mean": torch.ones(2)}}
    for step in (1, 2):  # the second save reuses the first one's buffers, after its write is done
        writer.save(path, {**payload(step), "state": weights, "groups": [{"lr": 0.1 * step}]})
        weights["w"].add_(1.0)
        weights["bn"]["mean"].mul_(3.0)
        writer.wait()
        ckpt = load_checkpoint(path)
        assert ckpt["step"] == step and ckpt["groups"] == [{"lr": 0.1 * step}]
        assert torch.equal(ckpt["state"]["w"], torch.full((3,), step - 1.0))
        assert torch.equal(ckpt["state"]["bn"]["mean"], torch.full((2,), 3.0 ** (step - 1)))


def test_background_checkpoint_error_reaches_the_training_thread(tmp_path, monkeypatch):
    path, writer = tmp_path / "checkpoint.pt", CheckpointWriter()
    writer.save(path, payload(1, w=torch.zeros(2)))
    writer.wait()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    writer.save(path, payload(2, w=torch.ones(2)))
    with pytest.raises(UserError, match="disk full"):
        writer.wait()
    writer.wait()  # reported once
    assert load_checkpoint(path)["step"] == 1


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 10) == pytest.approx(0.5)
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.0, abs=1e-12)


def test_byol_tau_schedule_and_ema_closed_form():
    assert cosine_tau(0.99, 0.0) == pytest.approx(0.99)
    assert cosine_tau(0.99, 0.5) == pytest.approx(0.995)
    assert cosine_tau(0.99, 1.0) == pytest.approx(1.0)
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    w0, o = target.weight.detach().clone(), online.weight.detach().clone()
    for _ in range(7):
        ema_update(target, online, 0.9)
    # constant online weights: target_k = tau^k w0 + (1 - tau^k) online
    torch.testing.assert_close(target.weight, 0.9**7 * w0 + (1 - 0.9**7) * o)


def test_ema_copies_batch_norm_statistics():
    online, target = (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)) for _ in range(2))
    online(torch.randn(16, 3))  # moves the running statistics and the batch counter
    ema_update(target, online, 0.99)
    for name, buffer in online.named_buffers():
        assert torch.equal(dict(target.named_buffers())[name], buffer), name


def test_lars_trust_ratio():
    p = nn.Parameter(torch.tensor([3.0, 4.0]))  # |p| = 5
    p.grad = torch.tensor([0.0, 10.0])  # |g| = 10
    opt = LARS([dict(params=[p], weight_decay=0.0)], lr=1.0, momentum=0.0, trust_coefficient=0.001)
    opt.step()
    # step = lr * eta * |p| / |g| * g = 0.001 * 0.5 * g
    torch.testing.assert_close(p.detach(), torch.tensor([3.0, 4.0 - 0.005]))


@pytest.mark.parametrize("lr, expected", [(1.0, 4.0 - 0.1), (0.001, 4.0 - 0.01)])
def test_lars_clip_caps_the_step_at_the_scheduled_lr(lr, expected):
    p = nn.Parameter(torch.tensor([3.0, 4.0]))  # |p| = 5
    p.grad = torch.tensor([0.0, 10.0])  # |g| = 10: eta |p| / |g| = 0.01
    LARS([dict(params=[p], weight_decay=0.0)], lr=lr, momentum=0.0, trust_coefficient=0.02, clip=True).step()
    # step = min(eta |p| / |g|, lr) * g: the adaptive rate 0.01 at lr 1, capped at lr 0.001 below it
    torch.testing.assert_close(p.detach(), torch.tensor([3.0, expected]))


def _lars_reference(steps, params, grads, groups, lr, momentum, eta, clip=False):
    """LARS (You et al., 2017, algorithm 1) one parameter at a time in float64: d = g + wd p, local
    lr = eta |p| / |d| (1 if either norm is 0) on LARS groups, v = m v + d, p = p - lr v. With ``clip``
    (solo-learn's LARS, ``clip_lr``) the local lr is min(eta |p| / |d| / lr, 1)."""
    params = [p.double().clone() for p in params]
    bufs = [None] * len(params)
    for step in range(steps):
        for i, (wd, lars) in enumerate(groups):
            g = grads[step][i].double()
            d = g + wd * params[i]
            if lars:
                pn, dn = params[i].norm(), d.norm()
                local = eta * pn / dn if pn > 0 and dn > 0 else 1.0
                d = d * (min(local / lr, 1.0) if clip else local)
            bufs[i] = d if bufs[i] is None else momentum * bufs[i] + d
            params[i] = params[i] - lr * bufs[i]
    return params


@pytest.mark.parametrize("clip, eta", [(False, 0.01), (True, 0.3)])
def test_lars_matches_per_parameter_reference_over_steps(clip, eta):
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 4), (16,), (3, 3, 2, 2), (5,)]
    init = [torch.randn(s, generator=g) for s in shapes]
    init[3].zero_()  # a zero parameter: trust ratio 1
    groups = [(1e-2, True), (0.0, False), (1e-2, True), (1e-2, True)]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(4)]
    grads[1][2].zero_()  # a zero update at one step
    for step_grads in grads:  # small gradients: a large trust ratio, which clip=True caps at 1
        step_grads[2] *= 0.05
    params = [nn.Parameter(p.clone()) for p in init]
    opt = LARS([dict(params=[params[0], params[2], params[3]], weight_decay=1e-2),
                dict(params=[params[1]], weight_decay=0.0, lars=False)], lr=0.5, momentum=0.9, trust_coefficient=eta,
               clip=clip)
    for step in range(4):
        for p, grad in zip(params, grads[step]):
            p.grad = grad.clone()
        opt.step()
    expected = _lars_reference(4, init, grads, groups, lr=0.5, momentum=0.9, eta=eta, clip=clip)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().double(), e, rtol=1e-5, atol=1e-6)
    # the state dict keeps one momentum buffer per parameter (checkpoints stay compatible)
    assert all("momentum_buffer" in opt.state[p] for p in params)


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_norm_and_bias_parameters_step_at_their_own_lr_scale(tmp_path, optimizer):
    from selfsup.engine.build import build_method

    cfg = TrainConfig(method="simclr", data="digits", steps=2, batch_size=64, image_size=8, optimizer=optimizer,
                      norm_bias_lr_scale=0.0)
    start = {k: v.clone() for k, v in build_method(cfg, 8, 10).named_parameters()}
    trained = dict(selfsup.train(cfg, tmp_path / optimizer, evaluate=False, show_progress=False).method
                   .named_parameters())
    moved = {k: not torch.equal(start[k], trained[k].detach()) for k in start}
    assert not any(moved[k] for k in start if start[k].ndim <= 1)  # biases and norms: rate 0 x lr
    assert all(moved[k] for k in start if start[k].ndim > 1)  # every weight did step
