"""Protocol 2: named optimisers and phases, loss terms, epoch hooks with sampling weights, the evaluated encoder,
and checkpoints written before any of it."""

import csv
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import selfsup
from selfsup.config import TrainConfig
from selfsup.data import load_data
from selfsup.engine.batches import epoch_order
from selfsup.engine.build import optimizer_settings, resolve_config
from selfsup.engine.checkpoint import load_checkpoint
from selfsup.engine.epoch import Epoch
from selfsup.errors import UserError
from selfsup.methods import METHODS, Batch, Method
from tests.data.make_checkpoint_v1 import Tiny
from tests.helpers import assert_same_state

DIGITS = load_data("digits")


class TwoTerms(Method):
    """A toy method: two named loss terms, and two optimisers stepped in two phases (head, then backbone)."""

    name = "two-terms"
    paper = "test"
    optimizer_defaults = {"backbone": dict(optimizer="sgd", lr=0.05, momentum=0.0),
                          "head": dict(optimizer="adam", lr=1e-3, betas=(0.5, 0.9), schedule="constant",
                                       warmup_epochs=0.0)}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head = nn.Linear(self.feat_dim, 10)
        self.phases = ["head", "backbone"]
        self.seen: list[tuple[int, bool, bool]] = []

    def parameters_of(self, optimizer):
        return list((self.head if optimizer == "head" else self.backbone).parameters())

    def training_step(self, batch: Batch):
        x = selfsup.data.views.eval_view(batch.images, self.image_size)
        logits = self.head(self.backbone(x))
        self.seen.append((batch.phase, self.head.weight.requires_grad,
                          next(self.backbone.parameters()).requires_grad))
        return {"ce": nn.functional.cross_entropy(logits, batch.labels), "l2": logits.pow(2).mean() * 1e-3}


@pytest.fixture
def two_terms(monkeypatch):
    monkeypatch.setitem(METHODS, TwoTerms.name, TwoTerms)


def small(**kw):
    base = dict(method="two-terms", data="digits", batch_size=64, image_size=8, steps=12, log_every=3)
    return TrainConfig(**{**base, **kw})


def test_each_phase_steps_its_own_optimiser_with_the_others_frozen_and_every_term_is_logged(tmp_path, two_terms):
    run = selfsup.train(small(), tmp_path / "run", evaluate=False, show_progress=False, data=DIGITS)
    method = run.method
    assert set(method.seen[:2]) == {(0, True, False), (1, False, True)}  # head phase, then backbone phase
    assert all(p.requires_grad for p in method.parameters())  # unfrozen after every phase
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert {"loss", "head", "backbone", "head/ce", "head/l2", "backbone/ce", "lr", "lr/head"} <= set(rows[0])
    for r in rows:  # the logged loss is the sum of the phases' totals, each the sum of its terms
        assert float(r["loss"]) == pytest.approx(float(r["head"]) + float(r["backbone"]), rel=1e-5)
        assert float(r["head"]) == pytest.approx(float(r["head/ce"]) + float(r["head/l2"]), rel=1e-5)
        assert float(r["lr/head"]) == pytest.approx(1e-3)  # constant, no warmup
    ckpt = load_checkpoint(tmp_path / "run")
    assert set(ckpt["optimizers"]) == {"backbone", "head"}
    assert "exp_avg" in next(iter(ckpt["optimizers"]["head"]["state"].values()))  # Adam's state


def test_a_run_with_two_optimisers_resumes_exactly_mid_epoch(tmp_path, two_terms):
    straight = selfsup.train(small(), tmp_path / "a", evaluate=False, show_progress=False, data=DIGITS)
    selfsup.train(small(), tmp_path / "b", evaluate=False, show_progress=False, data=DIGITS, stop_at=5)
    resumed = selfsup.train(small(), resume=tmp_path / "b", evaluate=False, show_progress=False, data=DIGITS)
    assert_same_state(straight.method.state_dict(), resumed.method.state_dict())


def test_optimiser_settings_come_from_the_method_then_the_top_level_keys_then_optimizers(two_terms):
    cfg = resolve_config(small(lr=0.2, optimizers={"head": {"lr": 0.01, "optimizer": "adamw"}}), DIGITS)
    s = optimizer_settings(cfg)
    assert (s["backbone"].optimizer, s["backbone"].lr, s["backbone"].momentum) == ("sgd", 0.2, 0.0)
    assert (s["head"].optimizer, s["head"].lr, s["head"].betas) == ("adamw", 0.01, (0.5, 0.9))
    assert cfg.optimizers["head"]["schedule"] == "constant"  # resolved into the config that replays the run
    with pytest.raises(UserError, match="no optimiser 'gen'"):
        optimizer_settings(small(optimizers={"gen": {"lr": 1.0}}))
    with pytest.raises(UserError, match="set by the top-level keys"):
        optimizer_settings(small(optimizers={"backbone": {"lr": 1.0}}))


@pytest.mark.parametrize("values, fragment", [
    (dict(optimizer="rmsprop"), "optimizer must be one of sgd, lars, adam, adamw"),
    (dict(optimizers={"head": {"optimizer": "rmsprop"}}), "optimizers.head.optimizer must be one of"),
    (dict(optimizers={"head": {"lr": "fast"}}), "optimizers.head.lr must be a positive number"),
    (dict(optimizers={"head": {"nesterov": True}}), "optimizers.head: unknown key(s) nesterov"),
    (dict(schedule="step"), "schedule must be one of cosine, constant"),
    (dict(betas=[0.9]), "betas must be a list of two numbers"),
])
def test_bad_optimiser_settings_are_one_line_errors(tmp_path, two_terms, values, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        selfsup.train(small(**values), tmp_path / "run", show_progress=False, data=DIGITS)
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_written_before_several_optimisers_resumes_as_the_run_would_have_gone_on(tmp_path):
    """tests/data/checkpoint-v1 was written by commit 009ce8b (one optimiser, the ``optimizer`` key; see
    make_checkpoint_v1.py there): SimCLR with a tiny custom backbone and LARS, stopped at step 5 of 12. Resumed
    today it must end where a run of today's code ends, bit for bit (both on one thread, as it was written)."""
    torch.set_num_threads(1)
    old = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "data" / "checkpoint-v1", old)
    assert "optimizer" in load_checkpoint(old) and "optimizers" not in load_checkpoint(old)
    resumed = selfsup.train(TrainConfig(), resume=old, backbone=Tiny(), evaluate=False, show_progress=False,
                            data=DIGITS)
    torch.manual_seed(0)
    cfg = TrainConfig(method="simclr", data="digits", batch_size=64, image_size=8, steps=12, log_every=3,
                      optimizer="lars", method_args=dict(proj_hidden_dim=16, proj_dim=8))
    straight = selfsup.train(cfg, tmp_path / "new", backbone=Tiny(), evaluate=False, show_progress=False,
                             data=DIGITS)
    assert_same_state(straight.method.state_dict(), resumed.method.state_dict())
    assert [r["step"] for r in csv.DictReader(open(old / "metrics.csv"))] == ["3", "5", "8", "11", "12"]


def test_epoch_order_by_weights_is_seeded_and_follows_the_weights():
    assert torch.equal(epoch_order(10, 0, 3), epoch_order(10, 0, 3))
    assert sorted(epoch_order(10, 0, 3).tolist()) == list(range(10))  # no weights: a permutation
    weights = torch.tensor([0.0, 1.0, 3.0, 0.0])
    draws = torch.cat([epoch_order(4, 0, e, weights) for e in range(2000)])
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, weights / weights.sum(), atol=0.02, rtol=0)
    assert torch.equal(epoch_order(4, 1, 7, weights), epoch_order(4, 1, 7, weights))


def test_epoch_context_extraction_restores_batch_norm_and_forgets_optimiser_state():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(4, 3, 5, 5)).sum().backward()
    opt.step()
    buffers = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "tracked" in k}
    images = torch.randint(0, 256, (10, 3, 5, 5), dtype=torch.uint8)
    ctx = Epoch(2, images, net, {"main": opt}, torch.device("cpu"), seed=0)
    feats = ctx.extract(lambda x: net(x.float() / 255), batch_size=3)  # training mode: BN statistics move...
    assert feats.shape == (10, 4 * 3 * 3)
    for k, v in buffers.items():  # ...and are put back
        assert torch.equal(net.state_dict()[k], v), k
    assert ctx.generator.initial_seed() == Epoch(2, images, net, {}, torch.device("cpu"), 0).generator.initial_seed()
    assert ctx.generator.initial_seed() != Epoch(3, images, net, {}, torch.device("cpu"), 0).generator.initial_seed()
    ctx.reset_optimizer_state(net[1])
    assert all(p not in opt.state for p in net[1].parameters()) and net[0].weight in opt.state
    with pytest.raises(ValueError):
        ctx.set_sampling_weights(torch.zeros(10))
