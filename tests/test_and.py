"""AND: neighbour search, entropy selection and the neighbourhood loss against slow references, the round schedule
through the engine, resume inside a round, views, bad options, and 2 processes vs 1."""

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

import selfsup
from selfsup.backbones import build_backbone
from selfsup.config import TrainConfig
from selfsup.data import load_data
from selfsup.data.ops.base import resize
from selfsup.data.sources import Dataset, ImageSet
from selfsup.data.views import augmented_views
from selfsup.dynamics import neighbourhoods
from selfsup.dynamics.bank import bank_update
from selfsup.dynamics.neighbourhoods import bank_neighbourhoods, curriculum_round, lowest
from selfsup.engine.checkpoint import load_checkpoint
from selfsup.engine.epoch import Epoch
from selfsup.errors import UserError
from selfsup.losses import instance_softmax
from selfsup.losses.neighbourhood import neighbourhood_softmax
from selfsup.methods import Batch
from selfsup.methods.anchor_neighbourhood import AND
from tests.helpers import assert_same_state, assert_two_ranks_train_like_one

DIGITS = load_data("digits")
#: 384 digits: 6 steps of 64 per epoch, to keep the engine's runs short
SMALL = Dataset("digits", pretrain=ImageSet(DIGITS.pretrain.images[:384], DIGITS.pretrain.labels[:384]))
N = len(SMALL.pretrain)


def cfg(**kw):
    base = dict(method="and", data="digits", batch_size=64, image_size=8, steps=36, log_every=3,
                method_args=dict(rounds=2))
    return TrainConfig(**{**base, **kw})


def unit_rows(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


# ------------------------------------------------------------------------------------ discovery and selection


@pytest.mark.parametrize("chunk", [2**25, 37 * 5])  # one chunk / chunks of 5 rows
def test_neighbours_and_entropy_match_a_brute_force_loop(monkeypatch, chunk):
    monkeypatch.setattr(neighbourhoods, "CHUNK_ELEMENTS", chunk)
    bank, t, k = unit_rows(37, 8, seed=0), 0.1, 3
    got_nb, got_h = bank_neighbourhoods(bank, k, t)
    rows = bank.double().tolist()
    for i, vi in enumerate(rows):
        sims = [sum(a * b for a, b in zip(vi, vj)) for vj in rows]
        others = sorted((j for j in range(len(rows)) if j != i), key=lambda j: -sims[j])
        assert got_nb[i].tolist() == others[:k]
        z = sum(math.exp(s / t) for s in sims)
        entropy = -sum(math.exp(s / t) / z * math.log(math.exp(s / t) / z) for s in sims)
        assert got_h[i].item() == pytest.approx(entropy, abs=1e-4)


def test_selection_is_exactly_the_lowest_fraction_with_ties_in_index_order():
    values = torch.randint(0, 5, (40,), generator=torch.Generator().manual_seed(1)).float()  # many ties
    for count in range(41):
        expected = sorted(range(40), key=lambda i: (values[i].item(), i))[:count]
        mask = lowest(values, count)
        assert sorted(torch.nonzero(mask).flatten().tolist()) == sorted(expected)


@pytest.mark.parametrize("epochs,rounds", [(10, 4), (5, 4), (6, 2), (7, 3), (3, 4), (200, 4)])
def test_round_r_begins_at_the_first_epoch_past_its_share_of_the_run(epochs, rounds):
    per_epoch = 7
    total = epochs * per_epoch
    for e in range(epochs):
        at = Fraction(e * per_epoch, total)  # the fraction done when epoch e starts
        expected = max(r for r in range(rounds + 1) if at >= Fraction(r, rounds + 1))
        assert curriculum_round(e * per_epoch / total, rounds) == expected


def test_a_round_start_discovers_from_the_bank_and_later_epochs_of_the_round_keep_it():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    m = AND(build_backbone("small"), 256, 8, num_samples=40, rounds=4, neighbours=2)
    m.on_epoch_start(Epoch(0, images, m, {}, torch.device("cpu"), seed=0))
    assert int(m.round) == 0 and not m.selected.any()  # round 0: instance discrimination
    m.after_step(0.5)  # half the run done: round floor(0.5 * 5) = 2, half of the images selected
    bank = m.bank.clone()
    m.on_epoch_start(Epoch(3, images, m, {}, torch.device("cpu"), seed=0))
    nb, entropy = bank_neighbourhoods(bank, 2, 0.1)
    assert int(m.round) == 2 and torch.equal(m.neighbours, nb) and torch.equal(m.selected, lowest(entropy, 20))
    selected, neighbours = m.selected.clone(), m.neighbours.clone()
    m.bank.copy_(unit_rows(40, 128, seed=3))  # the bank moves on; the round keeps its neighbourhoods
    m.after_step(0.55)
    m.on_epoch_start(Epoch(4, images, m, {}, torch.device("cpu"), seed=0))
    assert torch.equal(m.selected, selected) and torch.equal(m.neighbours, neighbours)


# -------------------------------------------------------------------------------------------------- the loss


def neighbourhood_reference(f, memory, targets, neighbours, selected, t):
    """Section 3.1: p_ij = exp(cos(f_i, m_j) / t) / sum_l exp(cos(f_i, m_l) / t); a selected anchor loses
    -log(p_ii + sum_{j in N(i)} p_ij), any other sample -log p_ii; the mean over the batch."""
    total = 0.0
    for b in range(len(f)):
        fb = f[b] / f[b].norm()
        e = [math.exp(float(fb @ m) / t) for m in memory]
        members = [int(targets[b])] + ([int(j) for j in neighbours[b]] if selected[b] else [])
        total += -math.log(sum(e[j] for j in members) / sum(e))
    return total / len(f)


def test_neighbourhood_loss_matches_the_papers_formula_for_selected_and_other_anchors():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(6, 8, generator=g, dtype=torch.float64)
    memory = F.normalize(torch.randn(30, 8, generator=g, dtype=torch.float64), dim=1)
    targets = torch.randperm(30, generator=g)[:6]
    neighbours = torch.stack([torch.randperm(30, generator=g)[:2] for _ in range(6)])
    neighbours = torch.where(neighbours == targets[:, None], (neighbours + 1) % 30, neighbours)  # never itself
    selected = torch.tensor([True, False, True, True, False, False])
    got = neighbourhood_softmax(f, memory, targets, neighbours, selected, 0.1)
    assert got.item() == pytest.approx(neighbourhood_reference(f, memory, targets, neighbours, selected, 0.1),
                                       rel=1e-5)
    # nothing selected: NPID's instance discrimination over the whole bank
    none = torch.zeros(6, dtype=torch.bool)
    torch.testing.assert_close(neighbourhood_softmax(f, memory, targets, neighbours, none, 0.1),
                               instance_softmax(f, memory, targets, 0.1))


def test_a_step_uses_each_images_selection_and_neighbours_and_writes_its_rows():
    torch.manual_seed(0)
    m = AND(build_backbone("small"), 256, 8, num_samples=40, neighbours=2)
    g = torch.Generator().manual_seed(0)
    m.neighbours.copy_(torch.randint(0, 40, (40, 2), generator=g))
    m.selected.copy_(torch.rand(40, generator=g) < 0.5)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=g)
    batch = Batch(images, None, torch.randperm(40, generator=g)[:6], torch.Generator().manual_seed(1), 0.3)
    before = m.bank.clone()
    loss = m.training_step(batch)
    with torch.no_grad():  # the step's features, recomputed from the same (seeded) view
        feats = m.head(m.backbone(augmented_views(images, m.aug, 8, torch.Generator().manual_seed(1), n=1)))
    i = batch.indices
    expected = neighbourhood_reference(feats.double(), before.double(), i, m.neighbours[i], m.selected[i], 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    m.after_step(0.3)
    torch.testing.assert_close(m.bank[i], bank_update(before[i], feats, 0.5))
    assert m.progress.item() == 0.3


# ------------------------------------------------------------------------------------- runs, views, options


def test_each_round_starts_at_its_epoch_and_a_resume_inside_it_keeps_its_selection(tmp_path, monkeypatch):
    seen = []
    start = AND.on_epoch_start

    def spy(self, ctx):
        start(self, ctx)
        seen.append((ctx.epoch, int(self.round), int(self.selected.sum())))

    monkeypatch.setattr(AND, "on_epoch_start", spy)
    # 6 epochs of 6 steps, 3 shares: round 1 starts at epoch 2 with half the images as anchors, round 2 at epoch 4
    # with all of them
    straight = selfsup.train(cfg(), tmp_path / "a", evaluate=False, show_progress=False, data=SMALL)
    expected = [(0, 0, 0), (1, 0, 0), (2, 1, N // 2), (3, 1, N // 2), (4, 2, N), (5, 2, N)]
    assert seen == expected
    # stop mid-epoch 2, then at the boundary of epoch 3 (inside round 1: its selection must come from the
    # checkpoint, not be redone), then finish
    selfsup.train(cfg(), tmp_path / "b", evaluate=False, show_progress=False, data=SMALL, stop_at=15)
    selfsup.train(cfg(), resume=tmp_path / "b", evaluate=False, show_progress=False, data=SMALL, stop_at=18)
    state = load_checkpoint(tmp_path / "b")["state"]
    assert int(state["round"]) == 1 and int(state["selected"].sum()) == N // 2
    resumed = selfsup.train(cfg(), resume=tmp_path / "b", evaluate=False, show_progress=False, data=SMALL)
    assert_same_state(straight.method.state_dict(), resumed.method.state_dict())
    assert seen == expected + expected[:3] + expected[3:]


def test_views_say_instance_discrimination_then_show_each_anchors_neighbours():
    torch.manual_seed(0)
    images = DIGITS.pretrain.images[:40]
    m = AND(build_backbone("small"), 256, 8, num_samples=40, rounds=2, neighbours=2)
    m.on_epoch_start(Epoch(0, images, m, {}, torch.device("cpu"), seed=0))
    batch = Batch(images[:4], None, torch.tensor([3, 17, 0, 29]), torch.Generator().manual_seed(0), 0.0)
    (view,) = m.views(batch)
    assert "instance discrimination" in view.title and list(view.captions) == [f"instance {i}" for i in (3, 17, 0, 29)]
    m.after_step(0.4)  # round 1 of 2: half of the images are anchors
    m.on_epoch_start(Epoch(1, images, m, {}, torch.device("cpu"), seed=0))
    panels = m.views(batch)
    assert len(panels) == 3 and all(len(p.images) == 4 and len(p.captions) == 4 for p in panels)
    for b, i in enumerate((3, 17, 0, 29)):
        anchor = bool(m.selected[i])
        assert panels[0].captions[b] == (f"anchor {i}" if anchor else f"instance {i} (not selected)")
        for j in range(2):
            n = int(m.neighbours[i, j])
            assert panels[1 + j].captions[b] == (f"{n} of anchor {i}" if anchor else f"{n} (unused)")
            torch.testing.assert_close(panels[1 + j].images[b], resize(images[n : n + 1], 8)[0])


@pytest.mark.parametrize("options,match", [(dict(rounds=0), "rounds must be >= 1"),
                                           (dict(neighbours=0), "neighbours must be between 1 and the 39"),
                                           (dict(neighbours=40), "neighbours must be between 1 and the 39")])
def test_bad_options_are_one_line_errors(options, match):
    with pytest.raises(UserError, match=match):
        AND(build_backbone("small"), 256, 8, num_samples=40, **options)


def test_a_bad_option_stops_a_run_with_a_user_error(tmp_path):
    with pytest.raises(UserError, match="rounds must be >= 1"):
        selfsup.train(cfg(method_args=dict(rounds=0)), tmp_path / "run", show_progress=False, data=SMALL)


def test_two_processes_discover_and_train_like_one(tmp_path):
    # all 1,347 digits, 10 steps of 128 per epoch, 4 epochs in 3 shares: rounds 1 and 2 start at epochs 2 and 3.
    # (Some budgets amplify the two runs' float differences past the tolerance, NPID's alike: 10 steps, measured)
    state = assert_two_ranks_train_like_one(tmp_path, cfg(batch_size=128, steps=40))
    assert int(state["round"]) == 2 and bool(state["selected"].all())
