"""Multi-task self-supervision (Doersch & Zisserman, ICCV 2017): every term is its single method's loss on the same
batch and draws (composition is exact, colourisation's L channel harmonised to the RGB trunk), weights scale the
terms, the trunk is one module held once, the epoch hooks reach every task, the lasso's stage mix and penalty against
loops in float64 and its gates learn, views and outputs, bad options, and 2 processes like 1."""

import copy
import math

import pytest
import torch
from torch import nn

from selfsup.backbones import Backbone, build_backbone
from selfsup.config import TrainConfig
from selfsup.data.ops.base import IMAGENET_MEAN, IMAGENET_STD
from selfsup.engine.epoch import Epoch
from selfsup.errors import UserError
from selfsup.heads.stage_mix import StageMix
from selfsup.methods import Batch
from selfsup.methods.colorization import Colorization
from selfsup.methods.context import ContextPrediction
from selfsup.methods.exemplar import Exemplar
from selfsup.methods.motion_segmentation import MotionSegmentation
from selfsup.methods.multitask import MultiTask
from selfsup.methods.rotnet import RotNet
from tests.helpers import assert_two_ranks_train_like_one

SIZE, N = 16, 40
IMAGES = torch.randint(0, 256, (N, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _method(seed: int = 0, **kw) -> MultiTask:
    torch.manual_seed(seed)
    return MultiTask(build_backbone("small", SIZE), 256, SIZE, num_samples=N, **kw)


def _batch(seed: int = 1, b: int = 8, **fields) -> Batch:
    return Batch(IMAGES[:b], None, torch.arange(b), torch.Generator().manual_seed(seed), 0.0, fields=fields)


def _epoch(method: nn.Module) -> Epoch:
    return Epoch(0, IMAGES, method, {}, torch.device("cpu"), seed=3)


class GreyTrunk(Backbone):
    """The reference harmonisation, written out: lightness L in [-1, 1] -> the grey image L / 100 in [0, 1] in every
    channel, ImageNet-normalised, into the RGB trunk."""

    def __init__(self, trunk: Backbone) -> None:
        super().__init__()
        self.trunk, self.stage_info, self.in_channels = trunk, trunk.stage_info, 1

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        grey = (x * 50.0 + 50.0) / 100.0
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return self.trunk.feature_map((grey.repeat(1, 3, 1, 1) - mean) / std)


def _single(method: MultiTask, name: str, cls, trunk: nn.Module) -> nn.Module:
    """The task as its own method on a copy of the trunk, with the multi-task run's head weights and buffers."""
    single = cls(trunk, 256, SIZE, num_samples=N)
    prefix = "backbone.trunk." if isinstance(trunk, GreyTrunk) else "backbone."
    shared = {prefix + k: v for k, v in method.backbone.state_dict().items()}
    single.load_state_dict({**method.tasks[name].state_dict(), **shared})
    return single


def test_each_term_is_the_single_methods_loss_on_the_same_batch_and_draws():
    method = _method()
    method.on_epoch_start(_epoch(method))
    trunk = copy.deepcopy(method.backbone)
    singles = {"context": _single(method, "context", ContextPrediction, trunk),
               "colorization": _single(method, "colorization", Colorization, GreyTrunk(trunk)),
               "exemplar": _single(method, "exemplar", Exemplar, trunk),
               "rotnet": _single(method, "rotnet", RotNet, trunk)}
    terms = method.training_step(_batch())
    assert list(terms) == list(singles)
    generator = torch.Generator().manual_seed(1)  # the tasks draw in order from the batch's generator
    for name, single in singles.items():
        expected = single.training_step(Batch(IMAGES[:8], None, torch.arange(8), generator, 0.0))
        torch.testing.assert_close(terms[name], expected, rtol=1e-6, atol=1e-7, msg=name)


def test_weights_scale_the_terms():
    plain = _method(tasks="rotnet,colorization").training_step(_batch())
    weighted = _method(tasks="rotnet,colorization", weights="2, 0.5").training_step(_batch())
    torch.testing.assert_close(weighted["rotnet"], 2 * plain["rotnet"])
    torch.testing.assert_close(weighted["colorization"], 0.5 * plain["colorization"])


@pytest.mark.parametrize("options", [
    dict(tasks="rotnet,rotnot"), dict(tasks="rotnet,rotnet"), dict(tasks="supervised"), dict(tasks="ssgan"),
    dict(tasks="moco"), dict(tasks="multi-task"), dict(weights="1,2"), dict(weights="1,1,1,-1"),
    dict(weights="a,b,c,d"), dict(task_args={"jigsaw": {}}), dict(task_args={"rotnet": {"head_dim": 3}}),
    dict(task_args="rotnet"),
    dict(lasso_weight=-1.0)])
def test_bad_options_are_one_line_user_errors(options):
    with pytest.raises(UserError) as e:
        _method(**options)
    assert "\n" not in str(e.value) and str(e.value).startswith("multi-task")


def test_the_lasso_needs_a_trunk_with_spatial_stages():
    with pytest.raises(UserError, match="lasso"):
        MultiTask(nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 8, SIZE, num_samples=N,
                  tasks="rotnet", lasso=True)


def test_the_trunk_is_one_module_held_once_and_building_the_tasks_leaves_it_untouched(monkeypatch):
    monkeypatch.setattr(RotNet, "needs_fields", ("text", "frames"))
    monkeypatch.setattr(MotionSegmentation, "needs_fields", ("frames",))
    torch.manual_seed(0)
    trunk = build_backbone("small", SIZE)
    before = copy.deepcopy(trunk.state_dict())
    method = MultiTask(trunk, 256, SIZE, num_samples=N, tasks="rotnet,colorization,motion-segmentation", lasso=True)
    for k, v in trunk.state_dict().items():  # the decoders' and the lasso's dummy passes ran in eval mode
        assert torch.equal(v, before[k]), k
    assert not [k for k in method.state_dict() if k.startswith("tasks.") and ".blocks." in k]
    assert all(t.backbone.trunk is trunk for t in method.tasks.values())
    params = method.parameters_of("main")
    assert len(params) == len({id(p) for p in params}) == len(list(method.parameters()))
    method.eval()
    assert not trunk.training and not method.tasks["rotnet"].backbone.training
    assert method.needs_fields == ("text", "frames")  # the tasks' union


def test_the_epoch_hooks_reach_every_task_and_exemplar_draws_the_epoch():
    method = _method(task_args={"exemplar": {"seeds": 10}})
    ctx = _epoch(method)
    method.on_epoch_start(ctx)
    seeds = method.tasks["exemplar"].seed_class >= 0
    assert int(seeds.sum()) == 10 and torch.equal(ctx.weights > 0, seeds)
    assert not torch.equal(method.tasks["colorization"].weights, torch.ones_like(method.tasks["colorization"].weights))
    calls = []
    for name, task in method.tasks.items():
        task.after_step = lambda p, name=name: calls.append((name, p))
    method.after_step(0.25)
    assert calls == [(name, 0.25) for name in method.tasks]


def test_sampling_weights_of_several_tasks_multiply():
    method = _method(tasks="rotnet,colorization")
    first, second = torch.rand(N, dtype=torch.float64), torch.rand(N, dtype=torch.float64)
    method.tasks["rotnet"].on_epoch_start = lambda ctx: ctx.set_sampling_weights(first)
    method.tasks["colorization"].on_epoch_start = lambda ctx: ctx.set_sampling_weights(second)
    ctx = _epoch(method)
    method.on_epoch_start(ctx)
    torch.testing.assert_close(ctx.weights, first * second)


def test_motion_segmentation_joins_on_clips():
    method = _method(tasks="rotnet,motion-segmentation")
    clips = torch.randint(0, 256, (8, 4, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    terms = method.training_step(_batch(frames=clips))
    trunk = copy.deepcopy(method.backbone)
    rotnet, motion = (_single(method, n, c, trunk) for n, c in (("rotnet", RotNet),
                                                                 ("motion-segmentation", MotionSegmentation)))
    batch = _batch(frames=clips)
    torch.testing.assert_close(terms["rotnet"], rotnet.training_step(batch))
    torch.testing.assert_close(terms["motion-segmentation"], motion.training_step(batch))
    with pytest.raises(UserError, match="frames"):
        method.training_step(_batch())


def _loop_mix(maps: list[torch.Tensor], gates: torch.Tensor, projections: list[torch.Tensor]) -> torch.Tensor:
    """sum_i g_i P_i(pool(s_i)) with loops in float64: each output cell the mean over its adaptive pooling bin
    [floor(k H / h), ceil((k + 1) H / h)), each projection row divided by its norm; no projection for the last stage
    when ``projections`` has one fewer entry (the identity)."""
    b, _, h, w = maps[-1].shape
    out_channels = maps[-1].shape[1] if len(projections) < len(maps) else projections[0].shape[0]
    out = torch.zeros(b, out_channels, h, w, dtype=torch.float64)
    for i, x in enumerate(maps):
        x = x.double()
        hi, wi = x.shape[-2:]
        weight = projections[i].double() if i < len(projections) else torch.eye(x.shape[1], dtype=torch.float64)
        for n in range(b):
            for y in range(h):
                for z in range(w):
                    y0, y1 = math.floor(y * hi / h), math.ceil((y + 1) * hi / h)
                    z0, z1 = math.floor(z * wi / w), math.ceil((z + 1) * wi / w)
                    pooled = [x[n, c, y0:y1, z0:z1].mean() for c in range(x.shape[1])]
                    for o in range(out_channels):
                        row = weight[o]
                        norm = math.sqrt(sum(float(v) ** 2 for v in row))
                        out[n, o, y, z] += float(gates[i]) * sum(float(row[c]) / norm * float(pooled[c])
                                                                 for c in range(x.shape[1]))
    return out


@pytest.mark.parametrize("out", [None, 5])
def test_the_stage_mix_matches_a_loop_reference(out):
    torch.manual_seed(0)
    channels, sizes = [2, 3, 4], [9, 5, 3]  # 5 -> 3: uneven, overlapping pooling bins
    mix = StageMix(channels, out)
    assert mix.gates.tolist() == [0.0, 0.0, 1.0]
    with torch.no_grad():
        mix.gates.copy_(torch.randn(3))
    maps = [torch.randn(2, c, s, s) for c, s in zip(channels, sizes, strict=True)]
    expected = _loop_mix(maps, mix.gates.detach(), [p.detach() for p in mix.projections])
    torch.testing.assert_close(mix(maps).double(), expected, rtol=1e-5, atol=1e-5)


def test_the_lasso_penalty_matches_a_loop_and_starts_where_the_naive_trunk_is():
    method = _method(tasks="rotnet,colorization", lasso=True, lasso_weight=0.01)
    naive = _method(tasks="rotnet,colorization")
    naive.load_state_dict(method.state_dict(), strict=False)  # the same heads; the lasso's gates on the last stage
    lasso_terms, naive_terms = method.training_step(_batch()), naive.training_step(_batch())
    for name in ("rotnet", "colorization"):
        torch.testing.assert_close(lasso_terms[name], naive_terms[name], msg=name)
    with torch.no_grad():
        for task in method.tasks.values():
            task.backbone.mix.gates.copy_(torch.randn(4, dtype=torch.float64).float())
    expected = 0.0
    for task in method.tasks.values():
        for g in task.backbone.mix.gates.tolist():
            expected += 0.01 * abs(g)
    assert method.training_step(_batch())["lasso"].item() == pytest.approx(expected, rel=1e-6)


def test_the_gates_learn_and_the_report_shows_them(tmp_path):
    method = _method(tasks="rotnet,colorization", lasso=True)
    opt = torch.optim.SGD(method.parameters_of("main"), lr=0.1)
    start = method.gates()
    for step in range(3):
        opt.zero_grad()
        sum(method.training_step(_batch(seed=step)).values()).backward()
        opt.step()
    moved = method.gates()
    assert all(moved[t][i] != start[t][i] for t in start for i in range(4)), (start, moved)
    metrics = method.report(tmp_path, None)
    assert (tmp_path / "lasso.png").stat().st_size > 0
    assert metrics["lasso_rotnet_block1"] == pytest.approx(moved["rotnet"][0])
    assert set(metrics) == {f"lasso_{t}_block{i}" for t in ("rotnet", "colorization") for i in range(1, 5)}


def test_views_and_outputs_are_the_tasks_own_rows_under_their_names():
    method = _method(tasks="rotnet,colorization")
    panels = method.views(_batch())
    generator = torch.Generator().manual_seed(1)
    own = [(name, p) for name in ("rotnet", "colorization")
           for p in method.tasks[name].views(Batch(IMAGES[:8], None, torch.arange(8), generator, 0.0))]
    assert [p.title for p in panels] == [f"{name}: {p.title}" for name, p in own]
    for mine, (_, theirs) in zip(panels, own, strict=True):
        assert torch.equal(mine.images, theirs.images) and mine.captions == theirs.captions
    assert panels[1].captions == ["class 1"] * 8  # rotnet's second row: rotated by 90 degrees
    method.eval()
    rows = method.outputs(IMAGES[:4], torch.Generator().manual_seed(0))
    assert [r.title.split(":")[0] for r in rows] == ["colorization", "colorization"]
    assert all(len(r.images) == 4 and 0 <= float(r.images.min()) and float(r.images.max()) <= 1 for r in rows)


def test_two_processes_train_like_one(tmp_path):
    cfg = TrainConfig(method="multi-task", data="digits", batch_size=16, image_size=8, steps=3, log_every=1,
                      method_args=dict(lasso=True, task_args={"exemplar": {"seeds": 32, "head_hidden_dim": 32},
                                                              "colorization": {"decoder_dim": 16}}))
    state = assert_two_ranks_train_like_one(tmp_path, cfg)
    assert int((state["tasks.exemplar.seed_class"] >= 0).sum()) == 32
